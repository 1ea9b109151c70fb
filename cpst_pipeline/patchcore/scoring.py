"""PatchCore scoring: nearest-bank-patch distances, the paper's reweighted image score, smoothed maps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from cpst_pipeline.patchcore.bank import MemoryBank


@dataclass(frozen=True)
class ScoringConfig:
    # Bank neighbours of the worst patch's match used for reweighting (anomalib's default).
    reweight_neighbors: int = 9
    map_sigma: float = 4.0
    # Standardise distances per grid position with the bank's held-out statistics.
    position_stats: bool = True


@dataclass
class PatchScores:
    grid: np.ndarray  # (h, w) nearest-bank-patch distances, standardised per position when the bank has statistics
    image_score: float


def reweighted_image_score(bank: MemoryBank, patches: np.ndarray, distances: np.ndarray, nearest: np.ndarray, k: int) -> float:
    """PatchCore eq. 7: scale the worst patch's score by how isolated its bank match is.

    If the matched bank patch sits in a dense region (its neighbours are almost as
    close to the test patch), the weight is near 1 - 1/k; if the match is an
    outlier among its neighbours, the weight shrinks.
    """
    worst = int(np.argmax(distances))
    score = float(distances[worst])
    k = min(k, len(bank.features))
    if k < 2:
        return score
    match = bank.features[nearest[worst]][None, :]
    _, neighbour_ids = bank.search(match, k)
    neighbours = bank.features[neighbour_ids[0]]
    to_neighbours = np.linalg.norm(neighbours - patches[worst][None, :].astype(np.float32), axis=1)
    weights = torch.softmax(torch.from_numpy(to_neighbours), dim=0).numpy()
    return float((1.0 - weights[0]) * score)


def score_patches(bank: MemoryBank, patches: np.ndarray, config: ScoringConfig) -> PatchScores:
    """``patches`` (h, w, D) of one image -> per-patch distances and the image score."""
    height, width, dim = patches.shape
    flat = np.ascontiguousarray(patches.reshape(-1, dim), dtype=np.float32)
    distances, nearest = bank.search(flat, k=1)
    grid = distances[:, 0].reshape(height, width)
    if config.position_stats and bank.position_stats is not None:
        grid = bank.position_stats.standardise(grid)
    image_score = reweighted_image_score(bank, flat, grid.ravel(), nearest[:, 0], config.reweight_neighbors)
    return PatchScores(grid=grid, image_score=image_score)


def anomaly_map(grid: np.ndarray, input_size: tuple[int, int], image_size: tuple[int, int], sigma: float) -> np.ndarray:
    """Patch grid -> map at the original image size.

    Smoothed at network-input resolution (where the paper's sigma=4 is defined),
    then resized to the image so it lines up with the mask.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))[None, None]
    at_input = F.interpolate(tensor, size=input_size, mode="bilinear", align_corners=False)[0, 0].numpy()
    smoothed = gaussian_filter(at_input, sigma=sigma) if sigma > 0 else at_input
    if tuple(image_size) == tuple(input_size):
        return smoothed
    resized = F.interpolate(torch.from_numpy(smoothed)[None, None], size=image_size, mode="bilinear", align_corners=False)
    return resized[0, 0].numpy()
