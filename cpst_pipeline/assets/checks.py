"""Asset checks for the failures that would otherwise be silent; per-domain checks run per partition."""


import pandas as pd
from dagster import AssetCheckResult, AssetCheckSeverity, AssetIn, MetadataValue, asset_check

from cpst_pipeline.assets.partitions import domain_partitions
from cpst_pipeline.cascade.calibration import recall_evidence_shortfall
from cpst_pipeline.cascade.model import CascadeArtifacts
from cpst_pipeline.cascade.policy import DomainCalibration
from cpst_pipeline.data.splits import leaked_groups
from cpst_pipeline.patchcore.bank import MemoryBank
from cpst_pipeline.pipeline.cross_domain import EvaluationReport
from cpst_pipeline.pipeline.quality_gates import DomainVerdict, assess_domains, evidence_from_calibration, evidence_from_evaluation
from cpst_pipeline.resources import CpstSettings


@asset_check(asset="splits", description="No physical part (group) appears in more than one of train / val / test.")
def no_group_leakage(splits: pd.DataFrame) -> AssetCheckResult:
    leaked = leaked_groups(splits)
    return AssetCheckResult(passed=not leaked, metadata={"leaked_groups": len(leaked), "examples": MetadataValue.json(leaked[:10])})


@asset_check(asset="memory_bank", partitions_def=domain_partitions, description="The domain's bank is not empty (a domain without normal training images has none, by design).")
def banks_not_empty(memory_bank: MemoryBank | None) -> AssetCheckResult:
    if memory_bank is None:
        return AssetCheckResult(passed=True, metadata={"coreset_patches": 0, "skipped": "no normal training images"})
    patches = int(memory_bank.meta["coreset_patches"])
    return AssetCheckResult(passed=patches > 0, metadata={"coreset_patches": patches})


@asset_check(asset="calibration", partitions_def=domain_partitions, description="The calibrated cascade reaches the target recall on the domain's val_mix (where it has anomalies).")
def calibrated_recall_met(settings: CpstSettings, calibration: DomainCalibration) -> AssetCheckResult:
    target, recall = settings.target_recall, calibration.val["recall"]
    return AssetCheckResult(
        passed=recall is None or recall >= target,
        severity=AssetCheckSeverity.ERROR,
        metadata={"target_recall": target, "val_recall": MetadataValue.text("n/a") if recall is None else MetadataValue.float(recall)},
    )


@asset_check(
    asset="calibration",
    partitions_def=domain_partitions,
    blocking=True,
    description="The domain's calibration is not degenerate (constant decision, NaN threshold, val FPR above the bound); too few val defects warns or fails.",
)
def calibration_quality_gates(settings: CpstSettings, calibration: DomainCalibration) -> AssetCheckResult:
    return _quality_gate_result(assess_domains(evidence_from_calibration({calibration.domain: calibration}), settings.quality_bounds()))


@asset_check(
    asset="calibration",
    partitions_def=domain_partitions,
    description="The calibration images (val, plus train_mix where cross-fitted) hold enough defects for the target recall "
    "to be supported at 95 % confidence (warns with the count needed).",
)
def calibration_evidence_sufficient(settings: CpstSettings, calibration: DomainCalibration) -> AssetCheckResult:
    figures = calibration.evidence or calibration.val
    shortfall = recall_evidence_shortfall(figures, settings.target_recall)
    return AssetCheckResult(
        passed=shortfall is None,
        severity=AssetCheckSeverity.WARN,
        description=shortfall,
        metadata={"recall_ci": MetadataValue.json(figures.get("recall_ci")), "defects": MetadataValue.int(int(figures.get("n_anomaly") or 0))},
    )


@asset_check(
    asset="evaluation_report",
    additional_ins={"cascade": AssetIn("cascade")},
    blocking=True,
    description="Every domain passes the quality gates on test too (FPR bound, AUROC clearly above chance): else nothing is registered.",
)
def model_quality_gates(settings: CpstSettings, evaluation_report: EvaluationReport, cascade: CascadeArtifacts) -> AssetCheckResult:
    return _quality_gate_result(assess_domains(evidence_from_evaluation(cascade.calibrations, evaluation_report.report), settings.quality_bounds()))


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
