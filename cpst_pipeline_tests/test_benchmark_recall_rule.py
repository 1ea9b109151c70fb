"""The recall-rule benchmark: held-out recall of the empirical and the counted threshold rule."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cpst_pipeline.benchmark.recall_rule import held_out_recall, markdown, measure


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
