"""The calibration-evidence benchmark's measurement, on a small synthetic scores table."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from cpst_pipeline.benchmark.calibration_evidence import check_matches_pipeline, markdown, measure_domain, pipeline_scores
from cpst_pipeline.benchmark.pipeline_run import load_pipeline
from cpst_pipeline.cascade.calibration import CalibrationConfig


def _table(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in (("train_mix", 120), ("val_mix", 40), ("test_mix", 60)):
        labels = (rng.random(n) < 0.3).astype(int)
        gate = 1 / (1 + np.exp(-(1.5 * labels - 1.0 + rng.normal(size=n))))
        rows.append(
            pd.DataFrame(
                {
                    "domain": "metal",
                    "split": split,
                    "label": labels,
                    "group_id": [f"{split}{i}" for i in range(n)],
                    "gate_score": np.nan if split == "train_mix" else gate,
                    "gate_oof": gate if split == "train_mix" else np.nan,
                    "raw_heatmap_score": 2.0 + 3.0 * labels + rng.normal(size=n),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def test_before_fits_the_band_on_val_and_after_on_val_plus_train_mix() -> None:
    table = _table()
    m = measure_domain("metal", table, CalibrationConfig())
    before, routed, after = (m.calibrations[k] for k in ("before", "routed", "after"))
    assert before.evidence["band_fitted_on"] == routed.evidence["band_fitted_on"] == {"val_mix": 40, "train_mix": 0}
    assert before.fusion is None and routed.fusion is None
    assert after.evidence["band_fitted_on"] == {"val_mix": 40, "train_mix": 120}
    test = table[table["split"] == "test_mix"]
    labels = test["label"].to_numpy()
    normalised = after.normalise(test["raw_heatmap_score"].to_numpy())
    decisions = after.decisions(test["gate_score"].to_numpy(), normalised)
    assert m.test["after"].recall == pytest.approx(decisions[labels == 1].mean())
    assert m.test["after"].false_positive_rate == pytest.approx(decisions[labels == 0].mean())
    assert m.test["heatmap alone"].false_positive_rate == pytest.approx((normalised[labels == 0] >= after.heatmap_threshold).mean())
    text = markdown([m], "synthetic", "a synthetic table", CalibrationConfig())
    assert text.startswith("## Calibration evidence (synthetic)")
    assert "| metal | before | 40 + 0 |" in text and "| metal | routed | 40 + 0 |" in text and "| metal | after | 40 + 120 |" in text


def test_a_table_without_out_of_fold_scores_fits_the_band_on_val_alone() -> None:
    table = _table(1).assign(gate_oof=np.nan)
    after = measure_domain("metal", table, CalibrationConfig()).calibrations["after"]
    assert after.evidence["band_fitted_on"] == {"val_mix": 40, "train_mix": 0}
    assert after.evidence["heatmap_threshold_fitted_on"] == {"val_mix": 40, "train_mix": 120}


def test_the_scores_of_a_pipeline_run_recompute_the_pipelines_own_calibration(tiny_pipeline) -> None:
    run = load_pipeline(tiny_pipeline["run"].settings)  # read back, nothing materialized again
    table = pipeline_scores(run)
    banked = sorted(d for d, bank in run.banks.items() if bank is not None)
    assert sorted(table["domain"].unique()) == banked
    assert set(table["split"]) == {"train_mix", "val_mix", "test_mix"}
    assert table["raw_heatmap_score"].notna().all()
    assert table.loc[table["split"] != "train_mix", "gate_score"].notna().all()
    for domain in banked:
        measurement = measure_domain(domain, table[table["domain"] == domain], run.config.calibration)
        check_matches_pipeline(measurement, run.calibrations[domain])
        moved = replace(run.calibrations[domain], score_center=run.calibrations[domain].score_center + 1.0)
        with pytest.raises(RuntimeError, match="differs from the pipeline's"):
            check_matches_pipeline(measurement, moved)
