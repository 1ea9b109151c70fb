"""Hand an evaluated cascade to MLflow: the report as a run, the cascade as a registered model.

MLflow logs folders, so the values are written to temporary folders named by their content
keys (the registry tags runs and versions with those names, so nothing is logged twice).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from cpst_pipeline.cascade.model import CascadeArtifacts, save_cascade
from cpst_pipeline.pipeline import registry
from cpst_pipeline.pipeline.config import PipelineConfig
from cpst_pipeline.pipeline.cross_domain import EvaluationReport


def evaluation_folder(cascade: CascadeArtifacts, report: EvaluationReport, folder: Path) -> dict:
    """The report and its cascade written under ``folder``, each in a folder named by its key,
    described as the registry takes them."""
    return {
        "directory": str(report.save(folder / report.key)),
        "cascade_dir": str(save_cascade(cascade, folder / report.cascade_key)),
        "test_fingerprint": report.test_fingerprint,
        "report": report.report,
    }


def log_report(cascade: CascadeArtifacts, report: EvaluationReport, config: PipelineConfig) -> str:
    """The MLflow run of this report (created once); returns its id."""
    with tempfile.TemporaryDirectory() as tmp:
        return registry.log_evaluation_run(evaluation_folder(cascade, report, Path(tmp)), config)


def register_model(
    cascade: CascadeArtifacts,
    report: EvaluationReport,
    test: pd.DataFrame,
    config: PipelineConfig,
    registry_config: registry.RegistryConfig,
    log: Callable[[str], None] = print,
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        evaluation = evaluation_folder(cascade, report, Path(tmp))
        run_id = registry.log_evaluation_run(evaluation, config)
        return registry.register_cascade(evaluation, run_id, test, config, registry_config, log=log)
