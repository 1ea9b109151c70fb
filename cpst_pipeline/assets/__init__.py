"""Dagster assets grouped by area; each is a thin wrapper over ``cpst_pipeline.pipeline``.

``code_version`` marks an asset's logic: bump it when a change alters what the asset computes,
and the UI marks it (and what depends on it) stale.
"""

from dagster import load_asset_checks_from_modules, load_assets_from_modules

from cpst_pipeline.assets import checks, data, evaluation, features, models

ALL_ASSETS = load_assets_from_modules([data, features, models, evaluation])
ALL_ASSET_CHECKS = load_asset_checks_from_modules([checks])
