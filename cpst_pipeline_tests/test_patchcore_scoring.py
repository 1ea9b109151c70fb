"""PatchCore scoring: the reweighted image score, per-patch grids, smoothed anomaly maps."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cpst_pipeline.patchcore.bank import BankConfig, MemoryBank, build_faiss_index, build_memory_bank
from cpst_pipeline.patchcore.position_stats import PositionStats
from cpst_pipeline.patchcore.scoring import (
    REFINE_CHUNK,
    ScoringConfig,
    anomaly_map,
    refine_worst_patches,
    reweighted_image_score,
    score_patches,
)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _bank(points: np.ndarray) -> MemoryBank:
    features = np.ascontiguousarray(points, dtype=np.float32)
    return MemoryBank(features, build_faiss_index(features, "flat"))


def _brute_nearest(bank_points: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    distances = np.linalg.norm(queries[:, None, :] - bank_points[None, :, :], axis=2)
    return distances.min(axis=1), distances.argmin(axis=1)


def test_reweighted_score_matches_patchcore_formula_on_a_hand_made_bank() -> None:
    bank_points = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    bank = _bank(bank_points)
    patches = np.array([[0.1, 0.0], [3.0, 3.0]], dtype=np.float32)
    distances, nearest = _brute_nearest(bank_points, patches)
    assert nearest.tolist() == [0, 3]

    score = reweighted_image_score(bank, patches, distances, nearest, k=3)

    # PatchCore eq. 7 by hand: worst patch m_test = (3, 3), its match m* = (5, 5);
    # N_b(m*) with b = 3 is {(5, 5), (0, 2), (1, 0)} (distances 0, 5.83, 6.40 from m*).
    s_star = math.dist((3, 3), (5, 5))
    to_neighbours = [math.dist((3, 3), p) for p in [(5, 5), (0, 2), (1, 0)]]
    weight = 1.0 - math.exp(to_neighbours[0]) / sum(math.exp(d) for d in to_neighbours)
    assert score == pytest.approx(weight * s_star, rel=1e-5)
    assert score < s_star


def test_reweighted_score_never_exceeds_the_raw_max_distance() -> None:
    for seed in range(5):
        rng = np.random.default_rng(seed)
        bank_points = rng.normal(size=(60, 8))
        bank = _bank(bank_points)
        patches = rng.normal(scale=1.5, size=(30, 8)).astype(np.float32)
        distances, nearest = _brute_nearest(bank.features, patches)
        raw = float(distances.max())
        for k in (2, 5, 9):
            score = reweighted_image_score(bank, patches, distances, nearest, k)
            assert 0.0 < score <= raw
        # k = 1 (or a one-patch bank) means no reweighting at all
        assert reweighted_image_score(bank, patches, distances, nearest, 1) == pytest.approx(raw)


def test_reweighted_score_clips_k_to_bank_size() -> None:
    bank_points = np.array([[0.0, 0.0], [4.0, 0.0]])
    bank = _bank(bank_points)
    patches = np.array([[1.0, 0.0]], dtype=np.float32)
    distances, nearest = _brute_nearest(bank_points, patches)
    score = reweighted_image_score(bank, patches, distances, nearest, k=9)
    weight = 1.0 - math.exp(1.0) / (math.exp(1.0) + math.exp(3.0))
    assert score == pytest.approx(weight * 1.0, rel=1e-5)


def test_score_patches_grid_shape_and_values() -> None:
    rng = np.random.default_rng(3)
    bank = build_memory_bank(rng.normal(size=(300, 12)).astype(np.float32), BankConfig(coreset_ratio=0.5))
    patches = rng.normal(size=(4, 6, 12)).astype(np.float16)
    patches[2, 3] += 10.0  # one clearly anomalous patch
    scores = score_patches(bank, patches, ScoringConfig(reweight_neighbors=5))
    assert scores.grid.shape == (4, 6)
    expected, _ = _brute_nearest(bank.features, patches.reshape(-1, 12).astype(np.float32))
    np.testing.assert_allclose(scores.grid.ravel(), expected, rtol=1e-4, atol=1e-3)
    assert np.unravel_index(scores.grid.argmax(), scores.grid.shape) == (2, 3)
    assert 0.0 < scores.image_score <= scores.grid.max() + 1e-6


def test_anomaly_map_has_image_size() -> None:
    grid = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    for image_size in [(64, 64), (96, 80), (50, 130)]:
        out = anomaly_map(grid, (64, 64), image_size, sigma=4.0)
        assert out.shape == image_size and out.dtype == np.float32


def test_anomaly_map_is_smoothed() -> None:
    grid = np.zeros((8, 8), np.float32)
    grid[3, 4] = 10.0
    raw = anomaly_map(grid, (64, 64), (64, 64), sigma=0.0)
    smooth = anomaly_map(grid, (64, 64), (64, 64), sigma=4.0)
    assert smooth.max() < raw.max()
    assert smooth.min() >= 0.0 and smooth.max() > 0.0
    # smoothing spreads the hot patch but keeps it where it was (rows 24-31, columns 32-39)
    row, col = np.unravel_index(smooth.argmax(), smooth.shape)
    assert 24 <= row < 32 and 32 <= col < 40
    assert smooth.sum() == pytest.approx(raw.sum(), rel=0.05)
    # a constant grid stays constant
    flat = anomaly_map(np.full((8, 8), 2.5, np.float32), (64, 64), (96, 96), sigma=4.0)
    np.testing.assert_allclose(flat, 2.5, rtol=1e-5)


def test_anomaly_map_without_sigma_is_the_bilinear_upsampling() -> None:
    grid = np.random.default_rng(1).random((4, 8)).astype(np.float32)
    out = anomaly_map(grid, (32, 64), (32, 64), sigma=0.0)
    reference = F.interpolate(torch.from_numpy(grid)[None, None], size=(32, 64), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(out, reference.numpy(), atol=1e-6)
    # bilinear upsampling never overshoots the grid's range
    assert out.min() >= grid.min() - 1e-6 and out.max() <= grid.max() + 1e-6


def test_search_exact_matches_brute_force() -> None:
    rng = np.random.default_rng(4)
    bank = _bank(rng.normal(size=(500, 16)))
    queries = rng.normal(size=(40, 16)).astype(np.float32)
    everything = np.linalg.norm(queries[:, None, :] - bank.features[None, :, :], axis=2)
    distances, ids = bank.search_exact(queries, k=5)
    np.testing.assert_array_equal(ids, np.argsort(everything, axis=1)[:, :5])
    np.testing.assert_allclose(distances, np.sort(everything, axis=1)[:, :5], rtol=1e-5)
    # k beyond the bank clips to the bank
    assert bank.search_exact(queries[:2], k=900)[1].shape == (2, 500)


def test_bfloat16_search_returns_true_distances_that_bound_the_exact_ones() -> None:
    rng = np.random.default_rng(8)
    bank = _bank(rng.normal(size=(3000, 32)))
    queries = rng.normal(size=(600, 32)).astype(np.float32)
    distances, ids = bank.search_bfloat16(queries, chunk=128)
    exact, exact_ids = bank.search_exact(queries, k=1)
    np.testing.assert_allclose(distances, np.linalg.norm(queries - bank.features[ids], axis=1), rtol=1e-5)
    assert (distances >= exact[:, 0] - 1e-5).all()
    assert (ids == exact_ids[:, 0]).mean() > 0.9  # only near-ties are ranked wrongly


@pytest.mark.parametrize("with_stats", [False, True])
@pytest.mark.parametrize("search", ["ivf", "bfloat16"])
def test_approximate_search_keeps_the_image_score_exact(with_stats: bool, search: str) -> None:
    rng = np.random.default_rng(5)
    points = rng.normal(size=(4000, 16)).astype(np.float32)
    exact = _bank(points)
    if search == "ivf":
        # One probed list of 63 on unclustered data: most queries get a farther bank patch than the nearest.
        approximate = MemoryBank(points, build_faiss_index(points, "ivf", ivf_nprobe=1))
    else:
        approximate = _bank(points)
    if with_stats:
        stats = PositionStats(rng.uniform(1.0, 2.0, size=(8, 10)).astype(np.float32), rng.uniform(0.2, 1.0, size=(8, 10)).astype(np.float32))
        approximate.position_stats = exact.position_stats = stats
    patches = rng.normal(size=(8, 10, 16)).astype(np.float32)
    patches[5, 2] += 6.0
    config = ScoringConfig(reweight_neighbors=9)

    if search == "ivf":
        unrefined = approximate.search(patches.reshape(-1, 16), k=1)[0][:, 0]
        assert (unrefined > exact.search(patches.reshape(-1, 16), k=1)[0][:, 0] + 1e-4).mean() > 0.5
    fast = score_patches(approximate, patches, replace(config, search="index" if search == "ivf" else "bfloat16"))
    reference = score_patches(exact, patches, config)

    assert fast.image_score == pytest.approx(reference.image_score, rel=1e-5)
    assert fast.grid.max() == pytest.approx(reference.grid.max(), rel=1e-5)
    assert fast.grid.argmax() == reference.grid.argmax()
    # Every other value is an upper bound of the exact one.
    assert (fast.grid >= reference.grid - 1e-4).all()


def test_refinement_stops_once_the_worst_patch_is_exact() -> None:
    rng = np.random.default_rng(6)
    points = rng.normal(size=(2000, 8)).astype(np.float32)
    bank = MemoryBank(points, build_faiss_index(points, "ivf", ivf_nprobe=1))
    queries = rng.normal(size=(640, 8)).astype(np.float32)
    queries[7] += 20.0  # far from everything: refined first, and nothing else can beat it
    distances, nearest = (column[:, 0].copy() for column in bank.search(queries, k=1))
    refined = refine_worst_patches(bank, queries, distances, nearest, lambda values: values)
    assert refined == REFINE_CHUNK
    exact_distance, exact_id = bank.search_exact(queries[7:8], k=1)
    assert distances[7] == pytest.approx(exact_distance[0, 0]) and nearest[7] == exact_id[0, 0]

