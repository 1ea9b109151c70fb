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


def _evaluation(report: EvaluationReport, folder: Path) -> dict:
    return {
        "directory": str(report.save(folder / report.key)),
        "cascade_dir": str(folder / report.cascade_key),
        "test_fingerprint": report.test_fingerprint,
        "report": report.report,
    }


def log_report(report: EvaluationReport, config: PipelineConfig) -> str:
    """The MLflow run of this report (created once); returns its id."""
    with tempfile.TemporaryDirectory() as tmp:
        return registry.log_evaluation_run(_evaluation(report, Path(tmp)), config)


def register_model(
    cascade: CascadeArtifacts, report: EvaluationReport, test: pd.DataFrame, config: PipelineConfig, model_name: str, log: Callable[[str], None] = print
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        evaluation = _evaluation(report, Path(tmp))
        save_cascade(cascade, Path(evaluation["cascade_dir"]))
        run_id = registry.log_evaluation_run(evaluation, config)
        return registry.register_cascade(evaluation, run_id, test, config, model_name, log=log)
