"""Choosing a domain's heatmap resolution from val measurements."""

from __future__ import annotations

import pytest

from cpst_pipeline.features.resolution import (
    ResolutionCandidate,
    ResolutionMeasurement,
    ResolutionRule,
    choose_resolution,
    resolution_candidates,
)
from cpst_pipeline.features.tiling import TilingConfig

BASE = ResolutionCandidate("256", short_side=256)
LARGER = ResolutionCandidate("384", short_side=384)
TILED = ResolutionCandidate("tiled x1", tiling=TilingConfig())


def measured(candidate: ResolutionCandidate, auroc: float | None, seconds: float) -> ResolutionMeasurement:
    return ResolutionMeasurement(candidate, auroc, seconds)


def test_candidates_follow_the_image_size() -> None:
    assert [c.name for c in resolution_candidates(640, 640)] == ["256", "384", "tiled x1"]
    # Kolektor: 500 px short side is under twice 256, so no tiles; 384 fits.
    assert [c.name for c in resolution_candidates(1250, 500)] == ["256", "384"]
    assert [c.name for c in resolution_candidates(200, 200)] == ["256"]
    assert resolution_candidates(1250, 500)[1].input_size(1250, 500) == (960, 384)
    assert TILED.input_size(640, 640) is None


def test_a_candidate_is_resized_or_tiled_never_both() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        ResolutionCandidate("both", short_side=256, tiling=TilingConfig())
    with pytest.raises(ValueError, match="exactly one"):
        ResolutionCandidate("neither")
    with pytest.raises(ValueError, match="positive"):
        measured(BASE, 0.9, 0.0)


def test_the_baseline_stays_when_no_candidate_clears_the_margin() -> None:
    # As on Kolektor: 384 px lost val AUROC; a small gain is not enough either.
    choice = choose_resolution([measured(BASE, 0.93, 0.1), measured(LARGER, 0.91, 0.3), measured(TILED, 0.945, 1.0)])
    assert choice.chosen == BASE
    assert "0.02" in choice.reason and len(choice.measurements) == 3


def test_the_best_candidate_past_the_margin_wins() -> None:
    choice = choose_resolution([measured(BASE, 0.59, 0.1), measured(LARGER, 0.70, 0.3), measured(TILED, 0.90, 1.0)])
    assert choice.chosen == TILED
    assert "0.900" in choice.reason and "0.590" in choice.reason


def test_near_ties_go_to_the_cheaper_candidate() -> None:
    measurements = [measured(BASE, 0.60, 0.1), measured(LARGER, 0.898, 0.3), measured(TILED, 0.90, 1.0)]
    assert choose_resolution(measurements).chosen == LARGER
    assert choose_resolution(measurements, ResolutionRule(tie=0.0)).chosen == TILED
    assert choose_resolution(measurements, ResolutionRule(margin=0.5)).chosen == BASE


def test_without_a_val_auroc_the_baseline_is_kept_and_nothing_measured_is_an_error() -> None:
    assert choose_resolution([measured(BASE, None, 0.1), measured(TILED, 0.9, 1.0)]).chosen == BASE
    assert choose_resolution([measured(BASE, 0.6, 0.1), measured(TILED, None, 1.0)]).chosen == BASE
    with pytest.raises(ValueError, match="no resolution"):
        choose_resolution([])
