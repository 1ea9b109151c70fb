"""Per-fold coresets, held-out position statistics, and scores standardised per grid position."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cpst_pipeline.patchcore.bank import BankConfig, load_memory_bank, save_memory_bank
from cpst_pipeline.patchcore.position_stats import MIN_STD_FRACTION, fit_position_stats
from cpst_pipeline.patchcore.scoring import ScoringConfig, score_patches
from cpst_pipeline.patchcore.training import assign_folds, fit_memory_bank

GRID = (6, 5)
DIM = 8


def _images(n: int, seed: int = 0, noisy_border: float = 3.0) -> list[np.ndarray]:
    """Normal images whose border patches are far noisier than the inside, as real borders are."""
    rng = np.random.default_rng(seed)
    scale = np.full(GRID, 0.3)
    scale[0, :] = scale[-1, :] = scale[:, 0] = scale[:, -1] = noisy_border
    return [(rng.normal(size=(*GRID, DIM)) * scale[..., None]).astype(np.float32) for _ in range(n)]


def test_folds_keep_groups_together_and_are_stable() -> None:
    groups = ["a", "a", "b", "c", "c", "d", "e"]
    folds = assign_folds(groups, 2)
    assert set(folds) == {0, 1}
    for group in set(groups):
        assert len({f for f, g in zip(folds, groups) if g == group}) == 1
    # dropping a group does not move the others
    again = assign_folds([g for g in groups if g != "b"], 2)
    assert list(again) == [f for f, g in zip(folds, groups) if g != "b"]


def test_bank_is_the_union_of_fold_coresets_with_held_out_statistics() -> None:
    images = _images(12)
    groups = [f"g{i // 2}" for i in range(12)]
    bank = fit_memory_bank(images, groups, BankConfig(coreset_ratio=0.5, folds=2), {"domain": "tile"})
    folds = assign_folds(groups, 2)
    per_fold = [int((folds == f).sum()) * GRID[0] * GRID[1] // 2 for f in (0, 1)]
    assert len(bank.features) == sum(per_fold) == bank.index.ntotal
    assert bank.meta["folds"] == 2 and bank.meta["position_stats"] and bank.meta["domain"] == "tile"
    stats = bank.position_stats
    assert stats.shape == GRID
    # held-out distances are larger and more spread on the noisy border than inside
    assert stats.mean[0, 0] > 2 * stats.mean[2, 2] and stats.std[0, 2] > stats.std[3, 2]


def test_one_group_gives_a_bank_without_statistics() -> None:
    bank = fit_memory_bank(_images(4), ["only"] * 4, BankConfig(coreset_ratio=0.5))
    assert bank.position_stats is None and bank.meta["folds"] == 1


def test_standardised_scores_find_an_inner_defect_that_raw_distances_miss() -> None:
    images = _images(40)
    bank = fit_memory_bank(images, [str(i) for i in range(40)], BankConfig(coreset_ratio=0.5))
    test = _images(1, seed=99)[0]
    test[3, 2] += 2.0  # a defect inside: far less than the border noise, far more than the inside noise
    raw = score_patches(bank, test, ScoringConfig(position_stats=False))
    standardised = score_patches(bank, test, ScoringConfig())
    assert np.unravel_index(raw.grid.argmax(), GRID) != (3, 2)
    assert np.unravel_index(standardised.grid.argmax(), GRID) == (3, 2)


def test_statistics_survive_save_and_load(tmp_path: Path) -> None:
    bank = fit_memory_bank(_images(8), list("aabbccdd"), BankConfig(coreset_ratio=0.5))
    loaded = load_memory_bank(save_memory_bank(bank, tmp_path / "bank"))
    np.testing.assert_array_equal(loaded.position_stats.mean, bank.position_stats.mean)
    np.testing.assert_array_equal(loaded.position_stats.std, bank.position_stats.std)
    np.save(tmp_path / "bank" / "position_std.npy", np.ones((2, 2), np.float32), allow_pickle=False)
    with pytest.raises(ValueError, match="inconsistent"):
        load_memory_bank(tmp_path / "bank")


def test_spread_is_floored_and_shapes_are_checked() -> None:
    grids = np.random.default_rng(0).normal(size=(50, 3, 3))
    grids[:, 0, 0] = 2.0  # a position that never varies
    stats = fit_position_stats(grids)
    assert stats.std[0, 0] == pytest.approx(MIN_STD_FRACTION * np.median(grids.std(axis=0)), rel=1e-5)
    assert np.isfinite(stats.standardise(np.ones((3, 3)))).all()
    with pytest.raises(ValueError, match="does not match"):
        stats.standardise(np.ones((4, 3)))
    with pytest.raises(ValueError, match="at least two"):
        fit_position_stats(np.ones((1, 3, 3)))


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="zero images"):
        fit_memory_bank([], [], BankConfig())
    with pytest.raises(ValueError, match="same patch grid"):
        fit_memory_bank([np.zeros((2, 2, 4), np.float32), np.zeros((3, 2, 4), np.float32)], ["a", "b"], BankConfig())
    with pytest.raises(ValueError, match="group labels"):
        fit_memory_bank(_images(2), ["a"], BankConfig())


def test_bank_size_is_capped_and_statistics_use_a_sample_of_images() -> None:
    images = _images(12)
    groups = [str(i) for i in range(12)]
    bank = fit_memory_bank(images, groups, BankConfig(coreset_ratio=0.5, max_patches=40, stats_images=4))
    assert len(bank.features) == 40  # 20 per fold instead of 90
    assert bank.position_stats.shape == GRID
    uncapped = fit_memory_bank(images, groups, BankConfig(coreset_ratio=0.5))
    assert len(uncapped.features) == 6 * GRID[0] * GRID[1]
