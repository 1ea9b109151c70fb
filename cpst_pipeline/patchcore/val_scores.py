"""A bank's scores on labelled val images: image scores, pixel AUROC of the maps, and time."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cpst_pipeline.evaluation.metrics import PixelAurocAccumulator
from cpst_pipeline.patchcore.bank import MemoryBank
from cpst_pipeline.patchcore.scoring import ScoringConfig, anomaly_map, score_patches


@dataclass(frozen=True)
class ValImage:
    patches: np.ndarray  # (h, w, D) patch features at the heatmap input size
    image_size: tuple[int, int]  # (H, W) of the image, which the map is resized to
    mask: np.ndarray | None  # (H, W) bool defect pixels; None: no defect pixels
    in_pixel_auroc: bool = True  # False for a defect image without a pixel mask


@dataclass(frozen=True)
class ValScores:
    image_scores: np.ndarray  # (N,) in the order of the images
    pixel_auroc: float | None  # None without pixels of both classes
    scoring_seconds: float  # score_patches alone (kNN, refinement, reweighting), summed


def score_val_images(bank: MemoryBank, images: Sequence[ValImage], scoring: ScoringConfig, input_size: tuple[int, int]) -> ValScores:
    pixels, image_scores, seconds = PixelAurocAccumulator(stride=2), [], 0.0
    for image in images:
        started = time.perf_counter()
        scores = score_patches(bank, image.patches, scoring)
        seconds += time.perf_counter() - started
        image_scores.append(scores.image_score)
        if image.in_pixel_auroc:
            pixels.add(image.mask, anomaly_map(scores.grid, input_size, image.image_size, scoring.map_sigma))
    return ValScores(np.array(image_scores), pixels.result(), seconds)
