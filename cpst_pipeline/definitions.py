"""Dagster entry point: ``dagster asset materialize -m cpst_pipeline.definitions ...`` or ``dagster dev``."""

from pathlib import Path

from dagster import Definitions, in_process_executor

from cpst_pipeline.assets import ALL_ASSET_CHECKS, ALL_ASSETS
from cpst_pipeline.executors import dask_job, in_process_job, parallel_job
from cpst_pipeline.resources import ArtifactIOManager, CpstSettings
from cpst_pipeline.schedules import retrain_job, weekly_retrain_schedule


def pipeline_resources(settings: CpstSettings) -> dict:
    return {
        "settings": settings,
        "io_manager": ArtifactIOManager(base_dir=str(Path(settings.data_dir) / "artifacts" / "assets")),
    }


defs = Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_ASSET_CHECKS,
    jobs=[retrain_job, in_process_job(), parallel_job(), dask_job()],
    schedules=[weekly_retrain_schedule],
    resources=pipeline_resources(CpstSettings()),
    # One process: steps share the loaded torch/timm instead of paying a fresh import each.
    executor=in_process_executor,
)
