"""Data assets: which images exist (and so which domain partitions), and which split each belongs to."""


import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetOut,
    DataVersion,
    MetadataValue,
    Output,
    multi_asset,
)

from cpst_pipeline.assets.automation import reindex_weekly
from cpst_pipeline.assets.metadata import progress_logger
from cpst_pipeline.assets.partitions import domain_partitions
from cpst_pipeline.data.index_check import check_index
from cpst_pipeline.data.splits import domains_without_normals, leaked_groups, split_summary
from cpst_pipeline.pipeline.dataset import ACCOUNT_FILE, QUARANTINE_FILE, frame_version, index_datasets, split_dataset
from cpst_pipeline.resources import CpstSettings


INDEX_CHECK = "index_fit_to_train_on"


def _counts_markdown(frame: pd.DataFrame, rows: list[str], column: str) -> str:
    return frame.groupby(rows + [column]).size().unstack(fill_value=0).to_markdown()


def _sync_domain_partitions(context: AssetExecutionContext, found: list[str]) -> tuple[list[str], list[str]]:
    """Add a partition per new domain; delete those of domains the index no longer finds, because
    cross-domain assets read every partition and would ship a domain whose images are gone (its
    run history stays in the event log, and its partition comes back with its images)."""
    name = domain_partitions.name
    known = set(context.instance.get_dynamic_partitions(name))
    new, removed = sorted(set(found) - known), sorted(known - set(found))
    if new:
        context.instance.add_dynamic_partitions(name, new)
        context.log.info(f"new domain partitions: {new}; materialize them before the cross-domain assets")
    for domain in removed:
        context.log.warning(f"domain {domain} has no images any more: its partition is removed")
        context.instance.delete_dynamic_partition(name, domain)
    return new, removed


@multi_asset(
    group_name="data",
    can_subset=False,
    outs={
        "dataset_index": AssetOut(
            code_version="1",
            automation_condition=reindex_weekly(),
            description="One row per usable image (path, domain, label, mask, group, hash); bad files go to quarantine.",
        ),
        "splits": AssetOut(
            code_version="1",
            is_required=False,  # not produced when the index check fails
            automation_condition=reindex_weekly(),
            description="Per-domain, group-aware, stratified train_normal / train_mix / val_mix / test_mix.",
        ),
    },
    check_specs=[
        AssetCheckSpec(
            INDEX_CHECK,
            asset="dataset_index",
            blocking=True,
            description="No domain has more than max_quarantine_share of its files quarantined, and no byte-identical images disagree on label or domain.",
        )
    ],
)
def dataset_index_and_splits(context: AssetExecutionContext, settings: CpstSettings):
    """Index and split in one step that also keeps the domain partitions in step with the domains
    found: a domain's partition never exists without its rows in ``splits``. When the index is not
    fit to train on (its check fails), neither the splits nor the partitions change."""
    config = settings.pipeline_config()
    result = index_datasets(config, progress_logger(context, "indexing images"))
    quarantine, summary = result.quarantine, result.summary()
    if len(quarantine):
        context.log.warning(f"{len(quarantine)} files or folders quarantined; see {QUARANTINE_FILE}")
    yield Output(
        result.index,
        output_name="dataset_index",
        data_version=DataVersion(frame_version(result.index)),
        metadata={
            "images": len(result.index),
            "images_read": MetadataValue.int(result.images_read),
            "domains": MetadataValue.md(_counts_markdown(result.index, ["domain"], "label")),
            "files_seen": summary.files_seen,
            "files_by_outcome": MetadataValue.json(summary.files_by_outcome),
            "files_by_rule": MetadataValue.md(summary.markdown()),
            "account_path": MetadataValue.path(str(config.artifacts_dir / ACCOUNT_FILE)),
            "quarantined": len(quarantine),
            "quarantine": MetadataValue.md(quarantine.head(50).to_markdown(index=False) if len(quarantine) else "none"),
            "quarantine_path": MetadataValue.path(str(config.artifacts_dir / QUARANTINE_FILE)),
        },
    )
    check = check_index(result.index, quarantine, config.index_check)
    yield AssetCheckResult(
        check_name=INDEX_CHECK,
        asset_key="dataset_index",
        passed=check.passed,
        severity=AssetCheckSeverity.ERROR,
        description=check.message,
        metadata={
            "quarantine_share": MetadataValue.json(check.quarantine_share),
            "over_bound": MetadataValue.json(check.over_bound),
            "conflicting_files": MetadataValue.json(check.conflicting_files),
        },
    )
    if not check.passed:
        context.log.error(f"the index is not fit to train on, so the splits are not updated: {check.message}")
        return
    frame = split_dataset(result.index, config)
    no_bank = domains_without_normals(frame)
    for domain in no_bank:
        context.log.warning(f"domain {domain} has no normal images: no memory bank; gate training and a separate evaluation only")
    yield Output(
        frame,
        output_name="splits",
        data_version=DataVersion(frame_version(frame)),
        metadata={
            "summary": MetadataValue.md(split_summary(frame).to_markdown()),
            "domains_without_bank": MetadataValue.json(no_bank),
            "leaked_groups": len(leaked_groups(frame)),
        },
    )
    # After the outputs are stored: a new partition is never read before its rows exist.
    new, removed = _sync_domain_partitions(context, sorted(result.index["domain"].unique()))
    context.add_asset_metadata({"new_domains": MetadataValue.json(new), "removed_domains": MetadataValue.json(removed)}, asset_key="dataset_index")
