"""Asset checks for the failures that would otherwise be silent."""


import pandas as pd
from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from cpst_pipeline.cascade.calibration import recall_evidence_shortfall
from cpst_pipeline.data.splits import leaked_groups
from cpst_pipeline.pipeline import steps
from cpst_pipeline.pipeline.quality_gates import DomainVerdict, assess_domains, evidence_from_calibration, evidence_from_evaluation
from cpst_pipeline.resources import CpstSettings


@asset_check(
    asset="dataset_index",
    blocking=True,
    description="No domain has more than max_quarantine_share of its files quarantined, and no byte-identical images disagree on label or domain.",
)
def index_fit_to_train_on(settings: CpstSettings, dataset_index: pd.DataFrame) -> AssetCheckResult:
    check = steps.check_indexed(dataset_index, settings.pipeline_config())
    return AssetCheckResult(
        passed=check.passed,
        severity=AssetCheckSeverity.ERROR,
        description=check.message,
        metadata={
            "quarantine_share": MetadataValue.json(check.quarantine_share),
            "over_bound": MetadataValue.json(check.over_bound),
            "conflicting_files": MetadataValue.json(check.conflicting_files),
        },
    )


@asset_check(asset="splits", description="No physical part (group) appears in more than one of train / val / test.")
def no_group_leakage(splits: pd.DataFrame) -> AssetCheckResult:
    leaked = leaked_groups(splits)
    return AssetCheckResult(passed=not leaked, metadata={"leaked_groups": len(leaked), "examples": MetadataValue.json(leaked[:10])})


@asset_check(asset="memory_banks", description="Every domain with normal images has a non-empty bank.")
def banks_not_empty(memory_banks: dict) -> AssetCheckResult:
    sizes = {d: b["coreset_patches"] for d, b in memory_banks["banks"].items()}
    return AssetCheckResult(passed=bool(sizes) and all(n > 0 for n in sizes.values()), metadata={"coreset_patches": MetadataValue.json(sizes)})


@asset_check(asset="gate_model", description="The gate separates classes on val_mix better than chance (AUROC > 0.5).")
def gate_better_than_chance(gate_model: dict) -> AssetCheckResult:
    auroc = gate_model["val_auroc"]
    return AssetCheckResult(
        passed=auroc is not None and auroc > 0.5,
        metadata={"val_auroc": MetadataValue.text("n/a") if auroc is None else MetadataValue.float(auroc)},
    )


@asset_check(asset="calibration", description="Calibrated cascade reaches the target recall on val_mix in every domain with anomalies.")
def calibrated_recall_met(settings: CpstSettings, calibration: dict) -> AssetCheckResult:
    target = settings.target_recall
    recalls = {d: c["val"]["recall"] for d, c in calibration["domains"].items() if c["val"]["recall"] is not None}
    short = {d: r for d, r in recalls.items() if r < target}
    return AssetCheckResult(
        passed=not short,
        severity=AssetCheckSeverity.ERROR,
        metadata={"target_recall": target, "val_recall": MetadataValue.json(recalls), "below_target": MetadataValue.json(short)},
    )


@asset_check(
    asset="calibration",
    blocking=True,
    description="No domain's calibration is degenerate (constant decision, NaN threshold, val FPR above the bound); too few val defects warns or fails.",
)
def calibration_quality_gates(settings: CpstSettings, calibration: dict) -> AssetCheckResult:
    return _quality_gate_result(assess_domains(evidence_from_calibration(steps.load_calibrations(calibration)), settings.quality_bounds()))


@asset_check(
    asset="evaluation_report",
    blocking=True,
    description="Every domain passes the quality gates on test too (FPR bound, AUROC clearly above chance): else nothing is registered.",
)
def model_quality_gates(settings: CpstSettings, evaluation_report: dict) -> AssetCheckResult:
    return _quality_gate_result(assess_domains(evidence_from_evaluation(evaluation_report), settings.quality_bounds()))


def _quality_gate_result(verdicts: list[DomainVerdict]) -> AssetCheckResult:
    """A failing domain fails the check (ERROR: blocks what follows); a warned one shows as a WARN failure."""
    statuses = {v.status for v in verdicts}
    return AssetCheckResult(
        passed=statuses <= {"pass"},
        severity=AssetCheckSeverity.ERROR if "fail" in statuses else AssetCheckSeverity.WARN,
        metadata={
            "failed": MetadataValue.json([v.domain for v in verdicts if v.status == "fail"]),
            "warned": MetadataValue.json([v.domain for v in verdicts if v.status == "warn"]),
            "verdicts": MetadataValue.md("\n".join(f"- {v.describe()}" for v in verdicts)),
        },
    )


@asset_check(asset="calibration", description="Val holds enough defects for the target recall to be supported at 95 % confidence (warns with the count needed).")
def calibration_evidence_sufficient(settings: CpstSettings, calibration: dict) -> AssetCheckResult:
    shortfalls = {d: recall_evidence_shortfall(c["val"], settings.target_recall) for d, c in calibration["domains"].items()}
    shortfalls = {d: s for d, s in shortfalls.items() if s}
    return AssetCheckResult(
        passed=not shortfalls,
        severity=AssetCheckSeverity.WARN,
        description="; ".join(f"{d}: {s}" for d, s in shortfalls.items()) or None,
        metadata={"val_recall_ci": MetadataValue.json({d: c["val"].get("recall_ci") for d, c in calibration["domains"].items()})},
    )
