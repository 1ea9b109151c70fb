"""Data assets: which images exist, and which split each belongs to."""


import pandas as pd
from dagster import AssetExecutionContext, MetadataValue, Output, asset

from cpst_pipeline.assets.metadata import progress_logger
from cpst_pipeline.data.splits import domains_without_normals, leaked_groups, split_summary
from cpst_pipeline.pipeline import steps
from cpst_pipeline.resources import CpstSettings


def _counts_markdown(frame: pd.DataFrame, rows: list[str], column: str) -> str:
    return frame.groupby(rows + [column]).size().unstack(fill_value=0).to_markdown()


@asset(group_name="data", description="One row per usable image (path, domain, label, mask, group, hash); bad files go to quarantine.")
def dataset_index(context: AssetExecutionContext, settings: CpstSettings) -> Output[pd.DataFrame]:
    config = settings.pipeline_config()
    result = steps.index_datasets(config, progress_logger(context, "indexing images"))
    quarantine, summary = result.quarantine, result.summary()
    if len(quarantine):
        context.log.warning(f"{len(quarantine)} files or folders quarantined; see {steps.QUARANTINE_FILE}")
    return Output(
        result.index,
        metadata={
            "images": len(result.index),
            "images_read": MetadataValue.int(result.images_read),
            "domains": MetadataValue.md(_counts_markdown(result.index, ["domain"], "label")),
            "files_seen": summary.files_seen,
            "files_by_outcome": MetadataValue.json(summary.files_by_outcome),
            "files_by_rule": MetadataValue.md(summary.markdown()),
            "account_path": MetadataValue.path(str(config.artifacts_dir / steps.ACCOUNT_FILE)),
            "quarantined": len(quarantine),
            "quarantine": MetadataValue.md(quarantine.head(50).to_markdown(index=False) if len(quarantine) else "none"),
            "quarantine_path": MetadataValue.path(str(config.artifacts_dir / steps.QUARANTINE_FILE)),
        },
    )


@asset(group_name="data", description="Per-domain, group-aware, stratified train_normal / train_mix / val_mix / test_mix.")
def splits(context: AssetExecutionContext, settings: CpstSettings, dataset_index: pd.DataFrame) -> Output[pd.DataFrame]:
    frame = steps.split_dataset(dataset_index, settings.pipeline_config())
    no_bank = domains_without_normals(frame)
    for domain in no_bank:
        context.log.warning(f"domain {domain} has no normal images: no memory bank; gate training and a separate evaluation only")
    return Output(
        frame,
        metadata={
            "summary": MetadataValue.md(split_summary(frame).to_markdown()),
            "domains_without_bank": MetadataValue.json(no_bank),
            "leaked_groups": len(leaked_groups(frame)),
        },
    )
