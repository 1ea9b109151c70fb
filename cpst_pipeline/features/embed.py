"""Compute and cache the features every later stage reads: gate embeddings and PatchCore patches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cpst_pipeline.features.backbone import BackboneConfig
from cpst_pipeline.features.extractor import FeatureExtractor
from cpst_pipeline.features.loader import iter_resized_batches
from cpst_pipeline.features.preprocess import fit_input_size
from cpst_pipeline.features.store import FeatureStore

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ResolutionConfig:
    heatmap_short_side: int = 256
    # The gate sees a quarter of the pixels, so it costs a fraction of a heatmap pass.
    gate_short_side: int = 128
    max_aspect: float = 4.0


@dataclass(frozen=True)
class DomainInputs:
    heatmap_size: tuple[int, int]
    gate_size: tuple[int, int]


def domain_input_sizes(index: pd.DataFrame, resolution: ResolutionConfig) -> dict[str, DomainInputs]:
    """One input size per domain from its median image shape (batches need one size)."""
    sizes = {}
    for domain, rows in index.groupby("domain"):
        height, width = float(rows["height"].median()), float(rows["width"].median())
        sizes[domain] = DomainInputs(
            heatmap_size=fit_input_size(height, width, resolution.heatmap_short_side, resolution.max_aspect),
            gate_size=fit_input_size(height, width, resolution.gate_short_side, resolution.max_aspect),
        )
    return sizes


def gate_kind(backbone_key: str, size: tuple[int, int]) -> str:
    return f"{backbone_key}/gate-{size[0]}x{size[1]}"


def patch_kind(backbone_key: str, size: tuple[int, int]) -> str:
    return f"{backbone_key}/patch-{size[0]}x{size[1]}"


def embed_domain(
    store: FeatureStore,
    backbone: BackboneConfig,
    get_extractor: Callable[[], FeatureExtractor],
    images: pd.DataFrame,
    inputs: DomainInputs,
    with_patches: bool,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> int:
    """Embed the images of one domain that the store lacks; returns how many were computed.

    ``images`` needs ``path`` and ``content_hash``; byte-identical images are embedded once.
    The network is only built (``get_extractor``) when something is missing.
    """
    key = backbone.key()
    # kind -> (input size, whether it stores patch features rather than an image embedding)
    wanted = {gate_kind(key, inputs.gate_size): (inputs.gate_size, False)}
    if with_patches:
        wanted[patch_kind(key, inputs.heatmap_size)] = (inputs.heatmap_size, True)
    unique = images.drop_duplicates("content_hash")
    missing_by_kind = {kind: set(unique["content_hash"]) - store.known_hashes(kind) for kind in wanted}
    todo = unique[unique["content_hash"].isin(set().union(*missing_by_kind.values()))]
    if todo.empty:
        return 0
    extractor = get_extractor()
    sizes = [size for size, _ in wanted.values()]
    hashes = todo["content_hash"].tolist()
    done = 0
    for positions, per_size in iter_resized_batches(todo["path"].tolist(), sizes, batch_size):
        batch_hashes = [hashes[i] for i in positions]
        for (kind, (size, is_patch)), resized in zip(wanted.items(), per_size):
            need = [i for i, h in enumerate(batch_hashes) if h in missing_by_kind[kind]]
            if not need:
                continue
            tensor = extractor.batch([resized[i] for i in need], size)
            if is_patch:
                # float16 halves disk and memory; nearest-neighbour distances barely move.
                values = extractor.patch_features(tensor).cpu().numpy().astype(np.float16)
            else:
                values = extractor.image_embedding(tensor).cpu().numpy().astype(np.float32)
            store.append(kind, {batch_hashes[i]: values[j] for j, i in enumerate(need)})
        done += len(positions)
        if progress:
            progress(done, len(todo))
    return len(todo)
