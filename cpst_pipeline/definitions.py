"""Dagster entry point: ``dagster asset materialize -m cpst_pipeline.definitions ...`` or ``dagster dev``."""


from pathlib import Path

from dagster import Definitions, in_process_executor, load_asset_checks_from_modules, load_assets_from_modules

from cpst_pipeline.assets import checks, data, evaluation, features, models
from cpst_pipeline.resources import ArtifactIOManager, CpstSettings
from cpst_pipeline.schedules import retrain_job, weekly_retrain_schedule

settings = CpstSettings()

defs = Definitions(
    assets=load_assets_from_modules([data, features, models, evaluation]),
    asset_checks=load_asset_checks_from_modules([checks]),
    jobs=[retrain_job],
    schedules=[weekly_retrain_schedule],
    # One process: steps share the loaded torch/timm instead of paying a fresh import each.
    executor=in_process_executor,
    resources={
        "settings": settings,
        "io_manager": ArtifactIOManager(base_dir=str(Path(settings.data_dir) / "artifacts" / "assets")),
    },
)
