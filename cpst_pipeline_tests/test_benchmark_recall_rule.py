"""The recall-rule benchmark: held-out recall of the empirical and the counted threshold rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cpst_pipeline.benchmark.recall_rule import counted_threshold, defects_to_flag, held_out_recall, markdown, measure


@pytest.mark.parametrize(
    ("n_defects", "target", "expected"),
    [(10, 0.95, 10), (18, 0.95, 18), (39, 0.95, 38), (41, 0.95, 40), (314, 0.95, 300), (19, 0.9, 18), (0, 0.95, 0), (5, 1.0, 5)],
)
def test_defects_to_flag(n_defects: int, target: float, expected: int) -> None:
    assert defects_to_flag(n_defects, target) == expected


def test_counted_threshold_picks_the_counted_defect_and_ignores_normals() -> None:
    assert counted_threshold(np.array([0, 1, 1, 1, 0]), np.array([9.0, 3.0, 1.0, 2.0, 8.0]), 0.95) == 1.0


def test_the_counted_rule_keeps_the_target_on_held_out_defects_where_the_empirical_one_falls_short() -> None:
    scores = np.random.default_rng(0).normal(size=60)
    recall = held_out_recall(scores, 0.95, folds=5, repeats=100)
    assert recall["counted"] >= 0.95 > recall["empirical"]


def test_measure_reads_evidence_defects_only() -> None:
    rng = np.random.default_rng(1)
    rows = []
    for split in ("train_mix", "val_mix", "test_mix"):
        labels = np.array([0] * 20 + [1] * 20)
        gate = rng.random(40)
        rows.append(
            pd.DataFrame(
                {
                    "domain": "metal",
                    "split": split,
                    "label": labels,
                    "gate_score": np.nan if split == "train_mix" else gate,
                    "gate_oof": gate if split == "train_mix" else np.nan,
                    # a test score that every threshold flags would show if test leaked in
                    "raw_heatmap_score": rng.normal(size=40) + (100.0 if split == "test_mix" else 0.0),
                }
            )
        )
    results = measure(pd.concat(rows, ignore_index=True), 0.95, folds=5, repeats=20)
    assert [(r.domain, r.score, r.n_defects) for r in results] == [("metal", "gate", 40), ("metal", "heatmap", 40)]
    assert all(r.recall["empirical"] < 1.0 for r in results)
    text = markdown(results, "a synthetic table", 0.95, 5, 20)
    assert "| metal | heatmap | 40 |" in text
