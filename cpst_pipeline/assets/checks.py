"""Asset checks for the failures that would otherwise be silent; per-domain checks run per partition."""


import pandas as pd
from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from cpst_pipeline.assets.partitions import domain_partitions
from cpst_pipeline.cascade.policy import DomainCalibration
from cpst_pipeline.data.splits import leaked_groups
from cpst_pipeline.patchcore.bank import MemoryBank
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
