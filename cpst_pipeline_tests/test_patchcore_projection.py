"""Banks that project wide patch features onto their principal components."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cpst_pipeline.patchcore.bank import BankConfig, load_memory_bank, save_memory_bank
from cpst_pipeline.patchcore.projection import fit_patch_projection
from cpst_pipeline.patchcore.scoring import ScoringConfig, score_patches
from cpst_pipeline.patchcore.training import fit_memory_bank


def _grids(n: int = 12, dim: int = 24, rank: int = 4, seed: int = 0) -> list[np.ndarray]:
    """(6, 6, dim) grids whose patches vary along ``rank`` directions, plus a little noise."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(rank, dim))
    return [(rng.normal(size=(6, 6, rank)) @ basis + 0.01 * rng.normal(size=(6, 6, dim)) + 3.0).astype(np.float16) for _ in range(n)]


def test_projection_keeps_the_directions_normal_patches_vary_along() -> None:
    grids = _grids()
    projection = fit_patch_projection(grids, dim=4)
    assert projection.components.shape == (24, 4) and projection.components.dtype == np.float32
    np.testing.assert_allclose(projection.components.T @ projection.components, np.eye(4), atol=1e-5)
    # four directions hold nearly all of the variance: distances survive the projection
    a, b = (g.reshape(-1, 24).astype(np.float32) for g in grids[:2])
    full = np.linalg.norm(a - b, axis=1)
    projected = np.linalg.norm(projection(a) - projection(b), axis=1)
    np.testing.assert_allclose(projected, full, rtol=0.02)
    with pytest.raises(ValueError, match="patches have 16 features, the projection expects 24"):
        projection(np.zeros((3, 16), dtype=np.float32))
    with pytest.raises(ValueError, match="cannot project 24 features onto 24"):
        fit_patch_projection(grids, dim=24)


def test_bank_projects_only_features_wider_than_its_dimension(tmp_path: Path) -> None:
    grids, groups = _grids(), [f"g{i % 4}" for i in range(12)]
    narrow = fit_memory_bank(grids, groups, BankConfig(coreset_ratio=0.5, projection_dim=None))
    wide = fit_memory_bank(grids, groups, BankConfig(coreset_ratio=0.5, projection_dim=4))
    assert narrow.projection is None and narrow.features.shape[1] == 24
    assert wide.projection is not None and wide.features.shape[1] == 4 and wide.meta["projected_from_dim"] == 24
    assert wide.position_stats.shape == (6, 6)

    # scoring takes the extractor's features and projects them itself
    query = _grids(n=1, seed=5)[0]
    scores = score_patches(wide, query, ScoringConfig())
    assert scores.grid.shape == (6, 6) and np.isfinite(scores.image_score)

    # the projection travels with the bank, as plain arrays
    directory = save_memory_bank(wide, tmp_path / "bank")
    assert {"projection_mean.npy", "projection_components.npy"} <= {p.name for p in directory.iterdir()}
    loaded = load_memory_bank(directory)
    np.testing.assert_array_equal(loaded.projection.components, wide.projection.components)
    assert score_patches(loaded, query, ScoringConfig()).image_score == pytest.approx(scores.image_score, abs=1e-6)


def test_load_rejects_a_projection_that_does_not_fit_the_coreset(tmp_path: Path) -> None:
    bank = fit_memory_bank(_grids(), [f"g{i % 4}" for i in range(12)], BankConfig(coreset_ratio=0.5, projection_dim=4))
    directory = save_memory_bank(bank, tmp_path / "bank")
    np.save(directory / "projection_components.npy", np.zeros((24, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="inconsistent: projection"):
        load_memory_bank(directory)
