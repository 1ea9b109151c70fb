"""What calibrating on more unseen images, and fusing the two scores, changes per domain.

    python -m cpst_pipeline.benchmark.calibration_evidence                      # the built-in demo
    python -m cpst_pipeline.benchmark.calibration_evidence --data ../shared/datasets --work data/benchmark --reuse --section shared
    python -m cpst_pipeline.benchmark.calibration_evidence --scores data/benchmark/calibration_scores.parquet

Three calibrations: before, the gate band fitted on val alone (``calibrate_domain``) with
the fewest-calls rule for every gate and no fusion; routed, the same with weak-gate
routing; after, the band fitted on val plus out-of-fold train_mix gate scores, with
weak-gate routing and fusion where it wins (``calibrate_on_evidence``). Printed per domain: AUROCs of gate, heatmap and fused score;
then for both calibrations the recall, false-positive rate (95 % Wilson intervals) and
heatmap call rate on val, where they were fitted, and on test, which neither saw, next to
the heatmap alone on test.

Scores table (parquet), one row per image: ``domain``, ``split`` (train_mix, val_mix,
test_mix), ``label`` (1 = anomaly), ``group_id``, ``gate_score`` (the final gate; val and
test), ``gate_oof`` (out-of-fold; train_mix), ``raw_heatmap_score`` (NaN without a bank).
Without ``--scores`` the script reads it off the project's own assets: it materializes them
under ``--work`` (up to the cascade), or with ``--reuse`` reads what a run there (the quality
benchmark's) already stored; the recomputed "after" calibration must equal the pipeline's.
The table is saved under ``--work``. Either way it writes a ``calibration_evidence`` section
of BENCHMARKS.md (``--section`` names one per set of datasets).
"""

from __future__ import annotations

import argparse
import platform
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cpst_pipeline.benchmark.markdown import fmt, replace_section
from cpst_pipeline.benchmark.pipeline_run import PipelineRun, add_asset_run_arguments, asset_run, asset_run_source
from cpst_pipeline.cascade.calibration import CalibrationConfig, CalibrationEvidence, ScoredImages, calibrate_domain, calibrate_on_evidence
from cpst_pipeline.cascade.fusion import FusionModel, fit_fusion
from cpst_pipeline.cascade.policy import DomainCalibration
from cpst_pipeline.evaluation.intervals import wilson_interval
from cpst_pipeline.evaluation.metrics import auroc
from cpst_pipeline.io_utils import atomic_path
from cpst_pipeline.pipeline.dataset import anomaly_labels
from cpst_pipeline.pipeline.domain_models import gate_scores, out_of_fold_gate_scores, raw_heatmap_scores


@dataclass(frozen=True)
class Outcome:
    recall: float | None
    recall_ci: list[float] | None
    false_positive_rate: float | None
    false_positive_rate_ci: list[float] | None
    call_rate: float


@dataclass(frozen=True)
class DomainMeasurement:
    domain: str
    val_auroc: dict[str, float | None]  # gate, heatmap
    test_auroc: dict[str, float | None]  # gate, heatmap, fused (chosen or not)
    fusion: dict | None  # the calibration's fusion decision (cross-validated AUROCs on the evidence)
    calibrations: dict[str, DomainCalibration]  # before, routed, after
    test: dict[str, Outcome]  # the same keys, plus "heatmap alone"


def _outcome(labels: np.ndarray, decisions: np.ndarray, calls: np.ndarray) -> Outcome:
    positives, negatives = labels == 1, labels == 0
    found, false_alarms = int(decisions[positives].sum()), int(decisions[negatives].sum())
    recall_ci, fpr_ci = wilson_interval(found, int(positives.sum())), wilson_interval(false_alarms, int(negatives.sum()))
    return Outcome(
        found / positives.sum() if positives.any() else None,
        recall_ci.as_list() if recall_ci else None,
        false_alarms / negatives.sum() if negatives.any() else None,
        fpr_ci.as_list() if fpr_ci else None,
        float(calls.mean()) if len(calls) else 0.0,
    )


def _fusion_fit(val: ScoredImages, train_mix: ScoredImages, calibration: DomainCalibration) -> FusionModel | None:
    parts = [val] + ([train_mix] if train_mix.gate_scores is not None else [])
    labels = np.concatenate([p.labels for p in parts])
    if labels.min() == labels.max():
        return None
    heatmap = calibration.normalise(np.concatenate([p.raw_heatmap_scores for p in parts]))
    return fit_fusion(labels, np.concatenate([p.gate_scores for p in parts]), heatmap)


def _images(rows: pd.DataFrame, gate_column: str) -> ScoredImages:
    """A split's rows of the scores table; a score column that is all NaN means no such score."""
    gate, raw = rows[gate_column].to_numpy(float), rows["raw_heatmap_score"].to_numpy(float)
    return ScoredImages(
        rows["label"].to_numpy(int),
        None if np.isnan(gate).all() else gate,
        None if np.isnan(raw).all() else raw,
        rows["group_id"].astype(str).to_numpy(),
    )


def measure_domain(domain: str, table: pd.DataFrame, config: CalibrationConfig) -> DomainMeasurement:
    """Before/after calibrations of one domain's rows of the scores table, and their test outcomes."""
    split = {name: table[table["split"] == name] for name in ("val_mix", "train_mix", "test_mix")}
    val, train_mix = _images(split["val_mix"], "gate_score"), _images(split["train_mix"], "gate_oof")
    extra = None if train_mix.raw_heatmap_scores is None else (train_mix.labels, train_mix.raw_heatmap_scores)
    val_only = replace(config, fuse_scores=False)
    calibrations = {
        "before": calibrate_domain(domain, val.labels, val.gate_scores, val.raw_heatmap_scores, replace(val_only, weak_gate_routing=False), extra),
        "routed": calibrate_domain(domain, val.labels, val.gate_scores, val.raw_heatmap_scores, val_only, extra),
        "after": calibrate_on_evidence(domain, CalibrationEvidence(val, train_mix if len(train_mix.labels) else None), config),
    }
    after = calibrations["after"]
    test = _images(split["test_mix"], "gate_score")

    def on_test(calibration: DomainCalibration) -> Outcome:
        heatmap = None if test.raw_heatmap_scores is None else calibration.normalise(test.raw_heatmap_scores)
        return _outcome(test.labels, calibration.decisions(test.gate_scores, heatmap), calibration.heatmap_calls(test.gate_scores))

    heatmap_alone = Outcome(None, None, None, None, 0.0)
    fused_test_auroc = None
    if test.raw_heatmap_scores is not None:
        heatmap = after.normalise(test.raw_heatmap_scores)
        heatmap_alone = _outcome(test.labels, heatmap >= after.heatmap_threshold, np.ones(len(heatmap), bool))
        # The fused score on test whether or not calibration chose it (refitted the same way when not).
        fusion = after.fusion or _fusion_fit(val, train_mix, after)
        if fusion is not None:
            fused_test_auroc = auroc(test.labels, fusion.score(test.gate_scores, heatmap))
    raw_auroc = lambda images: None if images.raw_heatmap_scores is None else auroc(images.labels, images.raw_heatmap_scores)  # noqa: E731
    return DomainMeasurement(
        domain=domain,
        val_auroc={"gate": auroc(val.labels, val.gate_scores), "heatmap": raw_auroc(val)},
        test_auroc={"gate": auroc(test.labels, test.gate_scores), "heatmap": raw_auroc(test), "fused": fused_test_auroc},
        fusion=after.evidence.get("fusion"),
        calibrations=calibrations,
        test={**{name: on_test(c) for name, c in calibrations.items()}, "heatmap alone": heatmap_alone},
    )


# ---------------------------------------------------------------- scores from a pipeline run


def pipeline_scores(run: PipelineRun) -> pd.DataFrame:
    """The scores table of a materialized run, from its own gates, cross-fitted gates and banks,
    so the "after" calibration is the one the pipeline fitted. Domains without a bank are left
    out: there is no heatmap score to weigh the gate against."""
    config, tables = run.config, []
    for domain, images in run.images.items():
        bank = run.value("memory_bank", domain)
        if bank is None:
            print(f"{domain}: no memory bank (no normal training images); left out", flush=True)
            continue
        rows = images.in_splits("train_mix", "val_mix", "test_mix")
        held_out = (rows["split"] != "train_mix").to_numpy()
        table = rows[["domain", "split", "group_id"]].assign(label=anomaly_labels(rows), gate_score=np.nan, gate_oof=np.nan)
        table.loc[held_out, "gate_score"] = gate_scores(run.value("gate_model", domain), images, rows[held_out], config)
        if not held_out.all():
            out_of_fold = out_of_fold_gate_scores(images, rows[~held_out], config)
            table.loc[~held_out, "gate_oof"] = np.nan if out_of_fold is None else out_of_fold
        table["raw_heatmap_score"] = raw_heatmap_scores(bank, images, rows, config)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def check_matches_pipeline(measurement: DomainMeasurement, fitted: DomainCalibration) -> None:
    """The benchmark's "after" calibration must be the pipeline's own, or its test figures describe another model."""
    after = measurement.calibrations["after"]
    fields = ("gate_low", "gate_high", "score_center", "score_scale", "heatmap_threshold", "fused_threshold")
    ours, theirs = ([getattr(c, f) for f in fields] for c in (after, fitted))
    if not np.allclose(ours, theirs, equal_nan=True):
        raise RuntimeError(f"{measurement.domain}: recomputed calibration {ours} differs from the pipeline's {theirs}")


# ---------------------------------------------------------------- printing


def _rate(value: float | None, interval: list[float] | None) -> str:
    return "n/a" if value is None else f"{value:.3f} [{interval[0]:.2f}-{interval[1]:.2f}]"


def _val_outcome(calibration: DomainCalibration) -> Outcome:
    v = calibration.val
    return Outcome(v["recall"], v["recall_ci"], v["false_positive_rate"], v["false_positive_rate_ci"], v["heatmap_call_rate"])


def markdown(measurements: list[DomainMeasurement], name: str, source: str, config: CalibrationConfig) -> str:
    lines = [
        f"## Calibration evidence ({name}): val alone vs val + out-of-fold train_mix, and score fusion",
        "",
        f"`python -m cpst_pipeline.benchmark.calibration_evidence` on {source}; {platform.machine()}, "
        f"{torch.get_num_threads()} torch thread(s); one gate per domain (5-fold cross-fit by group for train_mix), "
        f"target recall {config.target_recall}, FPR bound heatmap alone + {config.max_extra_fpr}, call budget "
        f"{config.max_call_rate:.0%}. Before: band on val only, fewest-calls rule for every gate, no fusion. Routed: "
        "the same with weak-gate routing. After: band on val + out-of-fold train_mix, weak-gate routing, fusion where "
        f"its grouped cross-validated AUROC beats the better single score by {config.fusion.min_auroc_gain}. "
        "Rates with 95 % Wilson intervals; heatmap alone at the after calibration's heatmap threshold.",
        "",
        "| domain | val AUROC gate / heatmap | evidence CV AUROC gate / heatmap / fused (used) | test AUROC gate / heatmap / fused (fitted on the evidence, used or not) |",
        "|---|---|---|---|",
    ]
    for m in measurements:
        f = m.fusion or {}
        lines.append(
            f"| {m.domain} | {fmt(m.val_auroc['gate'])} / {fmt(m.val_auroc['heatmap'])} "
            f"| {fmt(f.get('gate_auroc'))} / {fmt(f.get('heatmap_auroc'))} / {fmt(f.get('fused_cv_auroc'))} ({'yes' if f.get('use') else 'no'}) "
            f"| {fmt(m.test_auroc['gate'])} / {fmt(m.test_auroc['heatmap'])} / {fmt(m.test_auroc['fused'])} |"
        )
    lines += [
        "",
        "| domain | calibration | band fitted on (val + train_mix) | val recall | val FPR | val calls | test recall | test FPR | test calls |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in measurements:
        for name, calibration in m.calibrations.items():
            val, fitted, test = _val_outcome(calibration), calibration.evidence["band_fitted_on"], m.test[name]
            lines.append(
                f"| {m.domain} | {name} | {fitted['val_mix']} + {fitted['train_mix']} | {_rate(val.recall, val.recall_ci)} "
                f"| {_rate(val.false_positive_rate, val.false_positive_rate_ci)} | {val.call_rate:.2f} "
                f"| {_rate(test.recall, test.recall_ci)} | {_rate(test.false_positive_rate, test.false_positive_rate_ci)} | {test.call_rate:.2f} |"
            )
        h = m.test["heatmap alone"]
        lines.append(f"| {m.domain} | heatmap alone | - | - | - | - | {_rate(h.recall, h.recall_ci)} | {_rate(h.false_positive_rate, h.false_positive_rate_ci)} | 1.00 |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scores", type=Path, help="a scores table (parquet) saved by an earlier run; without it a pipeline run is read")
    add_asset_run_arguments(parser, work="data/calibration_evidence")
    args = parser.parse_args()
    run = None
    if args.scores is not None:
        table, source = pd.read_parquet(args.scores), f"`{args.scores}`"
    else:
        run = asset_run(args)
        table, source = pipeline_scores(run), asset_run_source(args)
        with atomic_path(args.work / "calibration_scores.parquet") as tmp:
            table.to_parquet(tmp, index=False)
    config = CalibrationConfig() if run is None else run.config.calibration
    measurements = [measure_domain(domain, rows, config) for domain, rows in table.groupby("domain", sort=True)]
    if run is not None:
        fitted = run.calibrations
        for m in measurements:
            check_matches_pipeline(m, fitted[m.domain])
    text = markdown(measurements, args.section or "demo", source, config)
    print(text)
    for m in measurements:
        for name, calibration in m.calibrations.items():
            notes = "".join(f"; {note}" for note in calibration.notes)
            print(f"{m.domain} {name}: band [{calibration.gate_low:.3f}, {calibration.gate_high:.3f}){notes}")
    if args.output.name:
        replace_section(args.output, f"calibration_evidence{'_' + args.section if args.section else ''}", text)


if __name__ == "__main__":
    main()
