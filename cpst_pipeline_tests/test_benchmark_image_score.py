"""The image-score benchmark: the rules it compares and the AUROCs it reports per evidence split."""

from __future__ import annotations

import numpy as np
import pytest

from cpst_pipeline.benchmark.image_score import image_score_rules, markdown, mean_of_worst, rule_aurocs
from cpst_pipeline.patchcore.image_scores import ImageScores


@pytest.mark.parametrize(("count", "expected"), [(1, 9.0), (2, 7.0), (0, 9.0), (10, 4.5)])
def test_mean_of_worst(count: int, expected: float) -> None:
    assert mean_of_worst(np.array([[1.0, 5.0], [3.0, 9.0]]), count) == expected


def test_rules_read_the_patch_grid_as_named() -> None:
    grid = np.zeros((10, 10), dtype=np.float32)
    grid[4, 4], grid[0, 0] = 8.0, 4.0
    scores = ImageScores(image_score=7.5, grid=grid, grid_pixels=(80, 80))
    read = {rule: rule_of(scores) for rule, rule_of in image_score_rules(map_sigma=4.0).items()}
    assert read["worst patch, reweighted (PatchCore; the pipeline's)"] == 7.5
    assert read["worst patch"] == 8.0
    assert read["mean of the 3 worst patches"] == pytest.approx(4.0)
    assert read["mean of the worst 1 % of patches"] == 8.0  # one patch of 100
    # smoothing spreads a one-patch spike, so its peak drops
    assert 0 < read["worst patch of the grid smoothed (sigma 1 patch)"] < 8.0
    assert 0 < read["maximum of the map (sigma 4 px at the input)"] < 8.0


def test_rule_aurocs_per_split_and_on_the_whole_evidence() -> None:
    labels = np.array([0, 1, 0, 1, 0, 0])
    splits = np.array(["val_mix", "val_mix", "train_mix", "train_mix", "train_mix", "val_mix"])
    perfect_on_val = np.array([0.1, 0.9, 0.5, 0.4, 0.2, 0.3])
    [measured] = rule_aurocs("metal", labels, splits, {"rule": perfect_on_val})
    assert measured.by_split["val_mix"] == 1.0
    assert measured.by_split["train_mix"] == 0.5  # the defect 0.4 beats 0.2 but not 0.5
    assert measured.by_split["evidence"] == pytest.approx(7 / 8)
    # a split with one class cannot be ranked: None, never a made-up figure
    [one_class] = rule_aurocs("metal", labels, np.array(["val_mix", "train_mix"] * 3), {"rule": perfect_on_val})
    assert one_class.by_split["val_mix"] is None and one_class.by_split["train_mix"] == 1.0
    text = markdown([measured, one_class], {"metal": {"val_mix": 1, "train_mix": 1}}, "demo", "a test")
    assert "| metal | 1 + 1 | rule | 1.0000 | 0.5000 | 0.8750 |" in text and "| n/a | 1.0000 | 0.8750 |" in text
