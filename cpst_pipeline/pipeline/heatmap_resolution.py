"""A domain's heatmap resolution, tried on its val images: each candidate gets a bank from its
train_normal images, every val image is scored, and ``features.resolution.choose_resolution``
keeps the 256 px default unless another candidate is clearly better.

The pipeline tries candidates only for images at least twice the default short side, the case
of small defects on large images (val AUROC on 640 px images with 1-3 px defects: 0.60-0.83 at
256 px, 0.83-0.99 at the chosen 384 px or tiles; BENCHMARKS "The resolution trial in the
pipeline"). Smaller images keep 256 px untried: Kolektor's 500 px images lost AUROC at 320-384 px.
The candidates are 256 px, 384 px and tiles of the default size, the image scaled so that its
short side takes at most three (``ResolutionTrialConfig.tiling``). A trial's outcome is cached by
the content of the images it used, so re-runs with the same images cost nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cpst_pipeline.data.images import load_image, load_mask
from cpst_pipeline.evaluation.metrics import PixelAurocAccumulator, auroc
from cpst_pipeline.features.embed import DomainInputs, ResolutionConfig, heatmap_features
from cpst_pipeline.features.extractor import FeatureExtractor
from cpst_pipeline.features.resolution import (
    ResolutionCandidate,
    ResolutionChoice,
    ResolutionMeasurement,
    ResolutionRule,
    ResolutionTrialConfig,
    choose_resolution,
    resolution_candidates,
)
from cpst_pipeline.io_utils import write_json_atomic
from cpst_pipeline.patchcore.bank import BankConfig, MemoryBank
from cpst_pipeline.patchcore.image_scores import fit_heatmap_bank, score_image
from cpst_pipeline.patchcore.scoring import ScoringConfig
from cpst_pipeline.patchcore.search_probes import even_sample
from cpst_pipeline.pipeline.config import PipelineConfig, content_key


# Part of the trial cache's key: bump it when a trial would measure differently.
TRIAL_VERSION = 2


@dataclass(frozen=True)
class CandidateResult:
    measurement: ResolutionMeasurement
    val_pixel_auroc: float | None
    bank_seconds: float


class CandidateRun:
    """Bank and val scoring of one domain at one candidate resolution."""

    def __init__(self, extractor: FeatureExtractor, candidate: ResolutionCandidate, median_size: tuple[float, float], max_aspect: float):
        self.extractor = extractor
        self.candidate = candidate
        self.inputs = candidate_inputs(candidate, median_size, max_aspect)

    def features(self, image: np.ndarray) -> np.ndarray:
        return heatmap_features(self.extractor, [image], self.inputs)[0]

    def fit(self, rows: pd.DataFrame, config: BankConfig) -> MemoryBank:
        features = [self.features(load_image(path)) for path in rows["path"]]
        return fit_heatmap_bank(features, rows["group_id"].tolist(), self.inputs, config)

    def score(self, bank: MemoryBank, image: np.ndarray, config: ScoringConfig) -> tuple[float, np.ndarray]:
        """Image score and the anomaly map at the image's own size."""
        scores = score_image(bank, self.features(image), image.shape[:2], self.inputs, config)
        return scores.image_score, scores.anomaly_map(image.shape[:2], config.map_sigma)


def candidate_inputs(candidate: ResolutionCandidate, median_size: tuple[float, float], max_aspect: float) -> DomainInputs:
    """The heatmap inputs a candidate gives a domain (the gate's size is not the trial's concern)."""
    if candidate.tiling is not None:
        tile = (candidate.tiling.tile_size, candidate.tiling.tile_size)
        return DomainInputs(heatmap_size=tile, gate_size=tile, tiling=candidate.tiling)
    size = candidate.input_size(*median_size, max_aspect)
    return DomainInputs(heatmap_size=size, gate_size=size)


def measure_candidate(run: CandidateRun, bank_rows: pd.DataFrame, val_rows: pd.DataFrame, bank: BankConfig, scoring: ScoringConfig) -> CandidateResult:
    started = time.perf_counter()
    fitted = run.fit(bank_rows, bank)
    bank_seconds = time.perf_counter() - started
    image_scores, seconds = [], []
    pixels = PixelAurocAccumulator(stride=2)  # exact AUROC over a regular quarter of the pixels
    for row in val_rows.itertuples():
        image = load_image(row.path)
        started = time.perf_counter()
        score, heatmap = run.score(fitted, image, scoring)
        seconds.append(time.perf_counter() - started)
        image_scores.append(score)
        if row.label == "anomaly" and row.mask_kind != "pixel":
            continue  # no defect pixels to compare with: out of pixel AUROC, as everywhere
        mask = load_mask(row.mask_path, row.mask_kind, (image.shape[1], image.shape[0])) if row.mask_kind == "pixel" else None
        pixels.add(mask, heatmap)
    labels = (val_rows["label"] == "anomaly").to_numpy()
    measurement = ResolutionMeasurement(run.candidate, auroc(labels, image_scores), float(np.mean(seconds)))
    return CandidateResult(measurement, pixels.result(), bank_seconds)


def even_rows(rows: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    """At most ``limit`` rows, spread evenly so every part of the sequence is represented."""
    return rows if limit is None else rows.iloc[even_sample(len(rows), limit)]


def median_size(rows: pd.DataFrame) -> tuple[float, float]:
    return float(rows["height"].median()), float(rows["width"].median())


def served_candidates(rows: pd.DataFrame, resolution: ResolutionConfig, trial: ResolutionTrialConfig) -> list[ResolutionCandidate]:
    """The candidates worth a trial for these images; one (the default) when none is. Tiles are
    scaled so the short side takes at most ``trial.max_tiles_per_side`` of them."""
    height, width = median_size(rows)
    if min(height, width) < trial.min_scale * resolution.heatmap_short_side:
        return resolution_candidates(height, width, resolution.heatmap_short_side)[:1]
    base = resolution.heatmap_short_side
    return resolution_candidates(height, width, base, trial.tiling(min(height, width), base))


def choose_domain_resolution(rows: pd.DataFrame, get_extractor: Callable[[], FeatureExtractor], config: PipelineConfig) -> ResolutionChoice | None:
    """The domain's heatmap resolution by the module doc's rule; None when nothing is tried (one
    candidate, no normal training images, or val without both classes)."""
    candidates = served_candidates(rows, config.resolution, config.resolution_trial)
    normal = rows[rows["split"] == "train_normal"].drop_duplicates("content_hash").sort_values("content_hash")
    bank_rows = even_rows(normal, config.resolution_trial.bank_images)
    val_rows = rows[rows["split"] == "val_mix"].sort_values("content_hash")
    if len(candidates) < 2 or bank_rows.empty or val_rows["label"].nunique() < 2:
        return None
    size = median_size(rows)
    key = content_key(
        TRIAL_VERSION, config.backbone.key(), [c.name for c in candidates], size, config.resolution, config.bank, config.scoring,
        config.resolution_trial, ResolutionRule(), list(zip(bank_rows["content_hash"], bank_rows["group_id"])),
        list(zip(val_rows["content_hash"], val_rows["label"], val_rows["mask_kind"])),
    )
    path = config.artifacts_dir / "resolution_trials" / f"{key}.json"
    if path.exists():
        return _choice_from_json(json.loads(path.read_text()), candidates)
    extractor = get_extractor()
    runs = [CandidateRun(extractor, c, size, config.resolution.max_aspect) for c in candidates]
    results = [measure_candidate(run, bank_rows, val_rows, config.bank, config.scoring) for run in runs]
    choice = choose_resolution([r.measurement for r in results])
    write_json_atomic(path, choice_json(choice))
    return choice


def choice_json(choice: ResolutionChoice) -> dict:
    """The choice as JSON: its candidate's name, why, and each candidate's val AUROC and time."""
    return {
        "chosen": choice.chosen.name,
        "reason": choice.reason,
        "measurements": [
            {"candidate": m.candidate.name, "val_image_auroc": m.val_image_auroc, "seconds_per_image": m.seconds_per_image}
            for m in choice.measurements
        ],
    }


def _choice_from_json(data: dict, candidates: list[ResolutionCandidate]) -> ResolutionChoice:
    by_name = {c.name: c for c in candidates}
    measurements = tuple(ResolutionMeasurement(by_name[m["candidate"]], m["val_image_auroc"], m["seconds_per_image"]) for m in data["measurements"])
    return ResolutionChoice(by_name[data["chosen"]], data["reason"], measurements)
