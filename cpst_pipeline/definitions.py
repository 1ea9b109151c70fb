"""Dagster entry point: ``dagster asset materialize -m cpst_pipeline.definitions ...`` or ``dagster dev``."""

from dagster import Definitions, in_process_executor

from cpst_pipeline.assets import ALL_ASSET_CHECKS, ALL_ASSETS
from cpst_pipeline.executors import dask_job, in_process_job, parallel_job
from cpst_pipeline.resources import CpstSettings, artifact_io_manager
from cpst_pipeline.schedules import retrain_sensor


def pipeline_resources(settings: CpstSettings) -> dict:
    # The IO manager reads its folder from the settings resource the launchpad edits.
    return {"settings": settings, "io_manager": artifact_io_manager}


defs = Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_ASSET_CHECKS,
    jobs=[in_process_job(), parallel_job(), dask_job()],
    sensors=[retrain_sensor],
    resources=pipeline_resources(CpstSettings()),
    # One process: steps share the loaded torch/timm instead of paying a fresh import each.
    executor=in_process_executor,
)
