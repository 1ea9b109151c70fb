"""PatchCore scoring: nearest-bank-patch distances, the paper's reweighted image score, smoothed maps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from cpst_pipeline.patchcore.bank import MemoryBank


# Patches re-searched per exact matrix product when refining an approximate index's answers.
REFINE_CHUNK = 64


@dataclass(frozen=True)
class ScoringConfig:
    # Bank neighbours of the worst patch's match used for reweighting (anomalib's default).
    reweight_neighbors: int = 9
    map_sigma: float = 4.0
    # Standardise distances per grid position with the bank's held-out statistics.
    position_stats: bool = True
    # "index": the bank's faiss index. "bfloat16": one bfloat16 product over the whole bank
    # (MemoryBank.search_bfloat16); either way the worst patches are refined exactly when
    # the first search is approximate, so image scores stay exact.
    search: str = "index"


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
    _, neighbour_ids = bank.search_exact(match, k)
    neighbours = bank.features[neighbour_ids[0]]
    to_neighbours = np.linalg.norm(neighbours - patches[worst][None, :].astype(np.float32), axis=1)
    weights = torch.softmax(torch.from_numpy(to_neighbours), dim=0).numpy()
    return float((1.0 - weights[0]) * score)


def refine_worst_patches(bank: MemoryBank, queries: np.ndarray, distances: np.ndarray, nearest: np.ndarray, to_scores) -> int:
    """Re-search, exactly and in place, the patches an approximate index scored worst; returns how many.

    An approximate index returns some bank patch, so its distance can only overestimate the
    exact one. Once the best exact score among re-searched patches beats every remaining
    estimate, the image's worst patch, its score and its match are exact; the map's other
    values stay upper bounds below it.
    """
    scores = to_scores(distances)
    order = np.argsort(-scores, kind="stable")
    best = -np.inf
    for start in range(0, len(order), REFINE_CHUNK):
        chunk = order[start : start + REFINE_CHUNK]
        if scores[chunk[0]] <= best:
            return start
        exact, ids = bank.search_exact(queries[chunk], k=1)
        distances[chunk], nearest[chunk] = exact[:, 0], ids[:, 0]
        best = max(best, float(to_scores(distances)[chunk].max()))
    return len(order)


def score_patches(bank: MemoryBank, patches: np.ndarray, config: ScoringConfig) -> PatchScores:
    """``patches`` (h, w, D) of one image -> per-patch distances and the image score."""
    height, width, dim = patches.shape
    flat = np.ascontiguousarray(patches.reshape(-1, dim), dtype=np.float32)
    if config.search == "bfloat16":
        distances, nearest = bank.search_bfloat16(flat)
    elif config.search == "index":
        distances, nearest = (column[:, 0].copy() for column in bank.search(flat, k=1))
    else:
        raise ValueError(f"unknown search {config.search!r}; choose 'index' or 'bfloat16'")
    stats = bank.position_stats if config.position_stats else None

    def to_scores(values: np.ndarray) -> np.ndarray:
        grid = values.reshape(height, width)
        return (stats.standardise(grid) if stats is not None else grid).ravel()

    if config.search == "bfloat16" or not bank.is_exact:
        refine_worst_patches(bank, flat, distances, nearest, to_scores)
    scores = to_scores(distances)
    image_score = reweighted_image_score(bank, flat, scores, nearest, config.reweight_neighbors)
    return PatchScores(grid=scores.reshape(height, width), image_score=image_score)


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
