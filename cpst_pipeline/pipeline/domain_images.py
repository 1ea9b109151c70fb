"""One domain's images as the per-domain assets see them, with their backbone features cached."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from cpst_pipeline.features.embed import DomainInputs, domain_input_sizes, domain_inputs_from_json, embed_domain, gate_kind
from cpst_pipeline.features.extractor import FeatureExtractor
from cpst_pipeline.features.store import FeatureStore
from cpst_pipeline.io_utils import atomic_path, write_json_atomic
from cpst_pipeline.pipeline.config import PipelineConfig, content_key
from cpst_pipeline.pipeline.dataset import frame_version
from cpst_pipeline.pipeline.heatmap_resolution import candidate_inputs, choice_json, choose_domain_resolution, median_size

Log = Callable[[str], None]


@dataclass
class DomainImages:
    """One domain's rows of the split table; the feature store holds every row's features."""

    domain: str
    rows: pd.DataFrame
    inputs: DomainInputs
    backbone_key: str
    # How the heatmap resolution was chosen (pipeline/heatmap_resolution.py); None: the default, untried.
    resolution: dict | None = None

    def in_splits(self, *names: str) -> pd.DataFrame:
        return self.rows[self.rows["split"].isin(names)]

    @property
    def has_bank(self) -> bool:
        """A memory bank needs normal training images."""
        return bool((self.rows["split"] == "train_normal").any())

    def version(self) -> str:
        """Changes exactly when anything built from these images would change."""
        return content_key(self.backbone_key, self.inputs, frame_version(self.rows))

    def save(self, directory: Path) -> None:
        with atomic_path(Path(directory) / "rows.parquet") as tmp:
            self.rows.to_parquet(tmp, index=False)
        spec = {
            "domain": self.domain,
            "backbone_key": self.backbone_key,
            "gate_size": self.inputs.gate_size,
            "heatmap_size": self.inputs.heatmap_size,
            "tiling": None if self.inputs.tiling is None else asdict(self.inputs.tiling),
            "resolution": self.resolution,
        }
        write_json_atomic(Path(directory) / "images.json", spec)

    @classmethod
    def load(cls, directory: Path) -> "DomainImages":
        spec = json.loads((Path(directory) / "images.json").read_text())
        inputs = domain_inputs_from_json(spec)
        return cls(spec["domain"], pd.read_parquet(Path(directory) / "rows.parquet"), inputs, spec["backbone_key"], spec.get("resolution"))


def embed_domain_images(splits: pd.DataFrame, domain: str, config: PipelineConfig, log: Log = print) -> tuple[DomainImages, int]:
    """Cache gate embeddings of the domain's images (and patch features when it gets a bank);
    returns the domain's images and how many were newly embedded."""
    rows = splits[splits["domain"] == domain].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"domain {domain!r} has no images in the split table; re-materialize dataset_index and splits")
    extractor = cache(lambda: FeatureExtractor(config.backbone, config.device))
    inputs = domain_input_sizes(rows, config.resolution)[domain]
    choice = choose_domain_resolution(rows, extractor, config)
    if choice is not None:
        chosen = candidate_inputs(choice.chosen, median_size(rows), config.resolution.max_aspect)
        inputs = replace(inputs, heatmap_size=chosen.heatmap_size, tiling=chosen.tiling)
        log(f"embeddings {domain}: heatmap input {inputs.describe_heatmap_input()} ({choice.chosen.name}: {choice.reason})")
    images = DomainImages(domain, rows, inputs, config.backbone.key(), None if choice is None else choice_json(choice))

    def progress(done: int, total: int) -> None:
        if done == total or done % (10 * config.batch_size) == 0:
            log(f"embeddings {domain}: {done}/{total} new images")

    computed = embed_domain(
        FeatureStore(config.features_dir),
        config.backbone,
        extractor,
        rows,
        images.inputs,
        images.has_bank,
        config.batch_size,
        progress,
    )
    return images, computed


def stored_features(config: PipelineConfig, kind: str, frame: pd.DataFrame) -> list[np.ndarray]:
    """Cached feature arrays of ``frame``'s rows, in row order."""
    found = FeatureStore(config.features_dir).load(kind, frame["content_hash"].unique().tolist())
    return [found[h] for h in frame["content_hash"]]


def gate_embeddings(images: DomainImages, frame: pd.DataFrame, config: PipelineConfig) -> np.ndarray:
    """(N, E) stored gate embeddings of ``frame``'s rows (images of this domain), in row order."""
    return np.stack(stored_features(config, gate_kind(images.backbone_key, images.inputs.gate_size), frame))


def patch_features(images: DomainImages, frame: pd.DataFrame, config: PipelineConfig) -> list[np.ndarray]:
    """Stored heatmap patch features of ``frame``'s rows, in row order: (h, w, D), or (tiles, h, w, D)."""
    return stored_features(config, images.inputs.heatmap_kind(images.backbone_key), frame)
