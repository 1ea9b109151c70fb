"""Dagster assets grouped by area; each is a thin wrapper over ``cpst_pipeline.pipeline``."""

from dagster import load_asset_checks_from_modules, load_assets_from_modules

from cpst_pipeline.assets import checks, data, evaluation, features, models

ALL_ASSETS = load_assets_from_modules([data, features, models, evaluation])
ALL_ASSET_CHECKS = load_asset_checks_from_modules([checks])
