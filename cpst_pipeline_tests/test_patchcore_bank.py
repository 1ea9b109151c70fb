"""Memory banks: coreset size, faiss index types, pickle-free save/load."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from cpst_pipeline.patchcore.bank import (
    INDEX_TYPES,
    IVF_FROM_PATCHES,
    BankConfig,
    MemoryBank,
    build_faiss_index,
    build_memory_bank,
    load_memory_bank,
    save_memory_bank,
)


def _patches(n: int = 400, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(8, dim))
    return (centres[rng.integers(0, 8, n)] + rng.normal(size=(n, dim))).astype(np.float32)


@pytest.mark.parametrize(("n", "ratio", "expected"), [(400, 0.1, 40), (400, 0.25, 100), (30, 0.1, 3), (5, 0.01, 1)])
def test_coreset_size_follows_ratio(n: int, ratio: float, expected: int) -> None:
    patches = _patches(n)
    bank = build_memory_bank(patches, BankConfig(coreset_ratio=ratio), meta={"domain": "metal"})
    assert bank.features.shape == (expected, 16) and bank.features.dtype == np.float32
    assert bank.index.ntotal == expected
    assert bank.meta["coreset_patches"] == expected and bank.meta["source_patches"] == n
    assert bank.meta["feature_dim"] == 16 and bank.meta["domain"] == "metal"
    # every coreset row is one of the input patches, and none is picked twice
    distances = np.linalg.norm(bank.features[:, None, :] - patches[None, :, :], axis=2)
    assert (distances.min(axis=1) == 0).all()
    assert len(np.unique(distances.argmin(axis=1))) == expected


def test_coreset_accepts_float16_patches_and_is_seeded() -> None:
    patches = _patches(200).astype(np.float16)
    a = build_memory_bank(patches, BankConfig(coreset_ratio=0.2, seed=3))
    b = build_memory_bank(patches, BankConfig(coreset_ratio=0.2, seed=3))
    assert a.features.dtype == np.float32
    np.testing.assert_array_equal(a.features, b.features)


def test_save_load_round_trip_gives_identical_search_results(tmp_path: Path) -> None:
    bank = build_memory_bank(_patches(), BankConfig(coreset_ratio=0.2), meta={"domain": "tile"})
    directory = save_memory_bank(bank, tmp_path / "bank")
    assert sorted(p.name for p in directory.iterdir()) == ["bank.json", "coreset.npy", "index.faiss"]
    # plain numpy and JSON: loading needs no pickle
    np.testing.assert_array_equal(np.load(directory / "coreset.npy", allow_pickle=False), bank.features)
    assert json.loads((directory / "bank.json").read_text())["domain"] == "tile"

    loaded = load_memory_bank(directory)
    np.testing.assert_array_equal(loaded.features, bank.features)
    assert loaded.meta == json.loads(json.dumps(bank.meta))
    queries = np.random.default_rng(5).normal(scale=4.0, size=(50, 16)).astype(np.float32)
    for k in (1, 3):
        d0, i0 = bank.search(queries, k)
        d1, i1 = loaded.search(queries, k)
        np.testing.assert_array_equal(i0, i1)
        np.testing.assert_array_equal(d0, d1)


def test_search_returns_euclidean_distances() -> None:
    bank = build_memory_bank(_patches(100), BankConfig(coreset_ratio=1.0))
    queries = np.random.default_rng(1).normal(scale=4.0, size=(20, 16)).astype(np.float32)
    distances, indices = bank.search(queries, k=2)
    brute = np.linalg.norm(queries[:, None, :] - bank.features[None, :, :], axis=2)
    np.testing.assert_array_equal(indices, np.argsort(brute, axis=1)[:, :2])
    np.testing.assert_allclose(distances, np.sort(brute, axis=1)[:, :2], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("index_type", INDEX_TYPES)
def test_every_index_type_finds_points_that_are_in_the_bank(index_type: str) -> None:
    patches = _patches(600, dim=24, seed=2)
    bank = build_memory_bank(patches, BankConfig(coreset_ratio=1.0, index_type=index_type))
    distances, indices = bank.search(bank.features, k=1)
    np.testing.assert_array_equal(indices[:, 0], np.arange(len(bank.features)))
    typical = np.median(bank.search(bank.features, k=2)[0][:, 1])
    assert distances.max() < 1e-2 * typical


def test_auto_index_is_exact_for_small_banks_and_ivf_for_large_ones(tmp_path: Path) -> None:
    assert isinstance(build_faiss_index(_patches(IVF_FROM_PATCHES - 1, dim=8), "auto"), faiss.IndexFlatL2)
    large = build_faiss_index(_patches(IVF_FROM_PATCHES, dim=8), "auto", ivf_nprobe=5)
    assert isinstance(large, faiss.IndexIVFFlat) and large.nlist == 128 and large.nprobe == 5
    # the probe count is part of the saved bank
    features = _patches(IVF_FROM_PATCHES, dim=8)
    saved = save_memory_bank(MemoryBank(features, large), tmp_path / "bank")
    assert faiss.extract_index_ivf(load_memory_bank(saved).index).nprobe == 5
    assert not load_memory_bank(saved).is_exact


def test_unknown_index_type_raises() -> None:
    with pytest.raises(ValueError, match="unknown index type 'annoy'"):
        build_faiss_index(_patches(50), "annoy")
    with pytest.raises(ValueError, match="unknown index type"):
        build_memory_bank(_patches(50), BankConfig(index_type="lsh"))


def test_empty_patches_raise() -> None:
    with pytest.raises(ValueError, match="zero patches"):
        build_memory_bank(np.zeros((0, 16), np.float32), BankConfig())


def test_load_rejects_an_inconsistent_bank(tmp_path: Path) -> None:
    directory = save_memory_bank(build_memory_bank(_patches(100), BankConfig(coreset_ratio=0.2)), tmp_path / "b")
    np.save(directory / "coreset.npy", np.zeros((3, 16), np.float32), allow_pickle=False)
    with pytest.raises(ValueError, match="inconsistent"):
        load_memory_bank(directory)


def test_single_coreset_respects_the_bank_cap() -> None:
    bank = build_memory_bank(_patches(400), BankConfig(coreset_ratio=0.5, max_patches=30))
    assert len(bank.features) == 30 and bank.meta["coreset_patches"] == 30
