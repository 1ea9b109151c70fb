"""Tests of the greedy k-center coreset sampler (cpst_pipeline.patchcore.sampler)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from cpst_pipeline.patchcore import sampler
from cpst_pipeline.patchcore.sampler import coreset_size, coverage_radius, greedy_coreset


# ----------------------------------------------------------------------------
# Reference implementation and data
# ----------------------------------------------------------------------------


def naive_greedy(features: np.ndarray, n_select: int, start_index: int = 0) -> np.ndarray:
    """Textbook O(N * k) farthest-point selection in float64 (reference only).

    Selected rows are excluded from later picks, so that the picks stay
    distinct once every remaining row duplicates a selected one; ties go to the
    lowest row index.
    """
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=0)
    mind = np.full(x.shape[0], np.inf)
    sel = np.empty(n_select, dtype=np.int64)
    c = start_index
    for t in range(n_select):
        sel[t] = c
        np.minimum(mind, ((x - x[c]) ** 2).sum(axis=1), out=mind)
        mind[sel[: t + 1]] = -1.0
        c = int(np.argmax(mind))
    return sel


def brute_radius(features: np.ndarray, selected: np.ndarray) -> float:
    x = np.asarray(features, dtype=np.float64)
    c = x[np.asarray(selected)]
    d2 = ((x[:, None, :] - c[None, :, :]) ** 2).sum(axis=-1)
    return float(np.sqrt(d2.min(axis=1).max()))


def assert_greedy(features: np.ndarray, sel: np.ndarray, rtol: float = 1e-5) -> None:
    """Every pick is (up to float32 rounding) a farthest row from the picks before it."""
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=0)
    scale = float(np.abs(x).max()) + 1e-12
    mind = np.full(x.shape[0], np.inf)
    chosen = np.zeros(x.shape[0], dtype=bool)
    for t, c in enumerate(sel):
        if t > 0:
            best = mind[~chosen].max()
            assert mind[c] >= best * (1.0 - rtol) - 1e-6 * scale, (t, mind[c], best)
        assert not chosen[c]
        chosen[c] = True
        np.minimum(mind, np.sqrt(((x - x[c]) ** 2).sum(axis=1)), out=mind)


def clustered(n: int, d: int, n_clusters: int, seed: int, outliers: float = 0.02) -> np.ndarray:
    """Anisotropic Gaussian mixture with long-tailed cluster sizes, an offset and a few outliers."""
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, n_clusters + 1) ** 1.1
    counts = rng.multinomial(n - int(n * outliers), w / w.sum())
    centres = rng.normal(0.0, 4.0, size=(n_clusters, d)) + 3.0
    parts = []
    for c, m in enumerate(counts):
        r = int(rng.integers(2, max(3, d // 2)))
        basis = rng.normal(size=(r, d))
        scales = rng.uniform(0.3, 2.0) * np.arange(1, r + 1) ** -0.7
        parts.append(centres[c] + (rng.normal(size=(m, r)) * scales) @ basis + 0.05 * rng.normal(size=(m, d)))
    parts.append(rng.normal(0.0, 8.0, size=(n - int(counts.sum()), d)) + 3.0)
    x = np.concatenate(parts)
    return x[rng.permutation(n)].astype(np.float32)


def uniform(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, d), dtype=np.float32)


@pytest.fixture(params=["default", "small_batches"])
def batching(request, monkeypatch):
    """Run with the library's batch sizes and with tiny ones (many pool refills and flushes)."""
    if request.param == "small_batches":
        monkeypatch.setattr(sampler, "_POOL_SIZE", 24)
        monkeypatch.setattr(sampler, "_MAX_PENDING", 16)
        monkeypatch.setattr(sampler, "_COARSE_MIN", 32)
    return request.param


# ----------------------------------------------------------------------------
# greedy_coreset: same picks as the naive algorithm
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, start",
    [
        (lambda: uniform(2000, 16, seed=1), 0),
        (lambda: clustered(2000, 16, n_clusters=25, seed=2), 1234),
        (lambda: clustered(2500, 48, n_clusters=40, seed=3), 77),
    ],
    ids=["uniform", "clustered16", "clustered48"],
)
def test_matches_naive_reference(make, start, batching):
    x = make()
    k = 300
    ref = naive_greedy(x, k, start_index=start)
    got = greedy_coreset(x, k, start_index=start)
    assert got.dtype == np.int64 and got.shape == (k,)
    assert got[0] == start
    np.testing.assert_array_equal(got, ref)
    assert coverage_radius(x, got) == pytest.approx(coverage_radius(x, ref), rel=1e-6)


@pytest.mark.parametrize("make", [lambda: uniform(1000, 8, seed=4), lambda: clustered(1500, 24, 30, seed=5)])
def test_greedy_property_over_long_runs(make, batching):
    """Far into the run distances get small and float32 near-ties appear; every pick must still be a farthest row."""
    x = make()
    k = x.shape[0] // 2
    sel = greedy_coreset(x, k, start_index=7)
    assert len(np.unique(sel)) == k
    assert_greedy(x, sel)
    ref = naive_greedy(x, k, start_index=7)
    assert coverage_radius(x, sel) == pytest.approx(coverage_radius(x, ref), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("coarse_min", [64, 10**9], ids=["coarse_index", "direct"])
def test_pruned_update_is_exercised_and_exact(monkeypatch, coarse_min):
    """On clustered data most batches take the pruned path (with or without the coarse index); picks stay exact."""
    calls = {"pruned": 0, "coarse": 0}
    cls = sampler._GreedyKCenter

    def counting(name, key):
        original = getattr(cls, name)

        def spy(self, *args, **kwargs):
            calls[key] += 1
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, spy)

    counting("_pruned_update", "pruned")
    counting("_pairs_coarse", "coarse")
    monkeypatch.setattr(sampler, "_POOL_SIZE", 64)
    monkeypatch.setattr(sampler, "_MAX_PENDING", 32)
    monkeypatch.setattr(sampler, "_COARSE_MIN", coarse_min)
    x = clustered(4000, 32, n_clusters=40, seed=6)
    k = 800
    sel = greedy_coreset(x, k)
    assert calls["pruned"] >= 8
    assert (calls["coarse"] > 5) == (coarse_min < k)
    np.testing.assert_array_equal(sel[:300], naive_greedy(x, 300))
    assert_greedy(x, sel)


# ----------------------------------------------------------------------------
# greedy_coreset: edge cases
# ----------------------------------------------------------------------------


def test_float16_input():
    x16 = clustered(2000, 16, n_clusters=20, seed=8).astype(np.float16)
    sel = greedy_coreset(x16, 200, start_index=3)
    np.testing.assert_array_equal(sel, naive_greedy(x16.astype(np.float64), 200, start_index=3))
    assert coverage_radius(x16, sel) == pytest.approx(brute_radius(x16, sel), rel=1e-4)


def test_float64_and_noncontiguous_input():
    x = uniform(1200, 20, seed=9).astype(np.float64)
    view = np.asfortranarray(x)[:, ::1]
    np.testing.assert_array_equal(greedy_coreset(view, 100), naive_greedy(x, 100))


@pytest.mark.parametrize("n", [1, 2, 5, 300])
def test_select_all_returns_every_row(n, batching):
    x = uniform(n, 6, seed=n)
    sel = greedy_coreset(x, n)
    np.testing.assert_array_equal(np.sort(sel), np.arange(n))
    assert coverage_radius(x, sel) == 0.0


def test_duplicates(batching):
    rng = np.random.default_rng(10)
    protos = rng.normal(size=(5, 12)).astype(np.float32)
    x = np.concatenate([np.repeat(protos, 200, axis=0), rng.normal(size=(300, 12)).astype(np.float32)])
    x = x[rng.permutation(len(x))]
    n = len(x)
    for k in (50, 305, n):
        sel = greedy_coreset(x, k)
        assert len(np.unique(sel)) == k
        assert coverage_radius(x, sel) == pytest.approx(coverage_radius(x, naive_greedy(x, k)), rel=1e-5, abs=1e-6)
    # 305 distinct rows: once all are picked nothing is left uncovered.
    assert coverage_radius(x, greedy_coreset(x, 305)) == pytest.approx(0.0, abs=1e-6)


def test_all_rows_identical():
    x = np.ones((100, 4), dtype=np.float32)
    sel = greedy_coreset(x, 10, start_index=5)
    assert sel[0] == 5 and len(np.unique(sel)) == 10
    assert coverage_radius(x, sel) == 0.0


def test_argument_validation():
    x = uniform(10, 3, seed=0)
    assert greedy_coreset(x, 0).shape == (0,)
    assert greedy_coreset(x, 3, start_index=-1)[0] == 9
    with pytest.raises(ValueError):
        greedy_coreset(x, 11)
    with pytest.raises(ValueError):
        greedy_coreset(x, -1)
    with pytest.raises(ValueError):
        greedy_coreset(x, 2, start_index=10)
    with pytest.raises(ValueError):
        greedy_coreset(x[0], 1)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError):
        greedy_coreset(bad, 2)


def test_input_not_modified():
    x = clustered(500, 8, 5, seed=11)
    before = x.copy()
    greedy_coreset(x, 50)
    np.testing.assert_array_equal(x, before)


# ----------------------------------------------------------------------------
# torch / device
# ----------------------------------------------------------------------------


def test_torch_path_matches_reference(single_torch_thread):
    """The torch implementation (used for CUDA devices), run here on the CPU."""
    torch = pytest.importorskip("torch")
    x = clustered(1500, 16, n_clusters=15, seed=12)
    sel = sampler._greedy_torch(x, 200, 11, torch.device("cpu"))
    np.testing.assert_array_equal(sel, naive_greedy(x, 200, start_index=11))


def test_cpu_device_and_cuda_fallback():
    torch = pytest.importorskip("torch")
    x = uniform(800, 10, seed=13)
    ref = naive_greedy(x, 60)
    np.testing.assert_array_equal(greedy_coreset(x, 60, device="cpu"), ref)
    if torch.cuda.is_available():
        np.testing.assert_array_equal(greedy_coreset(x, 60, device="cuda"), ref)
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            np.testing.assert_array_equal(greedy_coreset(x, 60, device="cuda"), ref)
        assert any("CUDA" in str(w.message) for w in caught)


# ----------------------------------------------------------------------------
# coverage_radius, coreset_size
# ----------------------------------------------------------------------------


def test_coverage_radius_matches_brute_force():
    x = clustered(1000, 12, n_clusters=10, seed=14) + 50.0  # large common offset
    sel = np.random.default_rng(0).choice(len(x), 37, replace=False)
    assert coverage_radius(x, sel, chunk_size=128) == pytest.approx(brute_radius(x, sel), rel=1e-5)
    assert coverage_radius(x, np.arange(len(x))) == 0.0
    with pytest.raises(ValueError):
        coverage_radius(x, [])


def test_coreset_size():
    assert coreset_size(65536, 0.1) == 6553
    assert coreset_size(10, 0.3) == 3
    assert coreset_size(10, 1.0) == 10
    assert coreset_size(10, 1e-9) == 1
    assert coreset_size(1, 0.01) == 1
    assert coreset_size(0, 0.5) == 0
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            coreset_size(10, bad)
    with pytest.raises(ValueError):
        coreset_size(-1, 0.5)
