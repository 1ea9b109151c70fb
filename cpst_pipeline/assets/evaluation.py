"""Calibration (one partition per domain), then the cross-domain assets that read every domain
partition: the router, the assembled cascade, its test report and the registered model."""


from datetime import datetime, timezone

import pandas as pd
from dagster import AssetExecutionContext, DataVersion, MetadataValue, Output

from cpst_pipeline.assets.automation import rebuild_when_cascade_changes
from cpst_pipeline.assets.metadata import number, progress_logger
from cpst_pipeline.assets.partitions import cross_domain_asset, domain_asset
from cpst_pipeline.cascade.model import CascadeArtifacts
from cpst_pipeline.cascade.policy import DomainCalibration
from cpst_pipeline.cascade.router import DomainRouter
from cpst_pipeline.gate.model import GateNet
from cpst_pipeline.patchcore.bank import MemoryBank
from cpst_pipeline.pipeline.cross_domain import EvaluationReport, assemble_cascade, cascade_key, evaluate_cascade, fit_router, test_rows
from cpst_pipeline.pipeline.domain_images import DomainImages
from cpst_pipeline.pipeline.domain_models import calibrate_domain_cascade
from cpst_pipeline.pipeline.publish import log_report, register_model
from cpst_pipeline.resources import CpstSettings


@domain_asset(
    group_name="evaluation",
    code_version="4",
    description="The domain's score normalisation, heatmap threshold, gate band [T_low, T_high) and maybe a fused score, "
    "on val_mix plus train_mix scored by cross-fitted gates (labelled images neither model trained on).",
)
def calibration(
    context: AssetExecutionContext, settings: CpstSettings, embeddings: DomainImages, gate_model: GateNet, memory_bank: MemoryBank | None
) -> Output[DomainCalibration]:
    calibrated = calibrate_domain_cascade(embeddings, gate_model, memory_bank, settings.pipeline_config(), log=context.log.info)
    thresholds = {"T_low": calibrated.gate_low, "T_high": calibrated.gate_high, "heatmap_threshold": calibrated.heatmap_threshold}
    table = pd.DataFrame([{"images": "val", **thresholds, **calibrated.val}, {"images": "all evidence", **thresholds, **calibrated.evidence}])
    return Output(
        calibrated,
        metadata={
            "calibration": MetadataValue.md(table.to_markdown(index=False)),
            "fused_score": calibrated.fusion is not None,
            "notes": MetadataValue.json(calibrated.notes),
        },
    )


@cross_domain_asset(
    code_version="1",
    description="Domain centroids of the gate embeddings, for images that come without a domain.",
)
def domain_router(settings: CpstSettings, embeddings: dict[str, DomainImages]) -> Output[DomainRouter]:
    router = fit_router(embeddings, settings.pipeline_config())
    return Output(router, metadata={"domains": MetadataValue.json(router.domains)})


@cross_domain_asset(
    code_version="1",
    description="Every domain's gate, bank and calibration plus the router, as one deployable cascade.",
)
def cascade(
    settings: CpstSettings,
    embeddings: dict[str, DomainImages],
    gate_model: dict[str, GateNet],
    memory_bank: dict[str, MemoryBank | None],
    calibration: dict[str, DomainCalibration],
    domain_router: DomainRouter,
) -> Output[CascadeArtifacts]:
    assembled = assemble_cascade(embeddings, gate_model, memory_bank, calibration, domain_router, settings.pipeline_config())
    key = cascade_key(assembled)
    # From the cascade's files: a rebuild that changes nothing leaves the report up to date.
    return Output(assembled, data_version=DataVersion(key), metadata={"cascade_key": key, "domains": MetadataValue.json(sorted(assembled.calibrations))})


@cross_domain_asset(
    automation_condition=rebuild_when_cascade_changes(),
    code_version="3",
    description="Cascade vs always-heatmap on test_mix: metrics, latency, plots, HTML + JSON report; logged to MLflow.",
)
def evaluation_report(
    context: AssetExecutionContext, settings: CpstSettings, embeddings: dict[str, DomainImages], cascade: CascadeArtifacts
) -> Output[EvaluationReport]:
    config = settings.pipeline_config()
    run_info = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": config.dataset_roots or "generated demo dataset",
        "backbone": config.backbone.key(),
        "target_recall": config.calibration.target_recall,
    }
    report = evaluate_cascade(cascade, test_rows(embeddings), config, run_info, progress_logger(context, "scoring test images"))
    run_id = log_report(cascade, report, config)
    overall = report.report["overall"] or {}
    summary = overall.get("cascade") or {}
    return Output(
        report,
        metadata={
            "summary": MetadataValue.md(report.markdown),
            "cascade_recall": number(summary.get("recall")),
            "cascade_auroc": number(summary.get("auroc")),
            "heatmap_call_rate": number(overall.get("heatmap_call_rate")),
            "mlflow_run_id": run_id,
        },
    )


@cross_domain_asset(
    automation_condition=rebuild_when_cascade_changes(),
    code_version="1",
    description="The cascade as an MLflow pyfunc model, if every domain passes the quality gates: new version = challenger, champion by the promotion rule.",
)
def registered_model(
    context: AssetExecutionContext,
    settings: CpstSettings,
    embeddings: dict[str, DomainImages],
    cascade: CascadeArtifacts,
    evaluation_report: EvaluationReport,
) -> Output[dict]:
    info = register_model(cascade, evaluation_report, test_rows(embeddings), settings.pipeline_config(), settings.registry_config(), log=context.log.info)
    return Output(
        info,
        metadata={
            "model_uri": info["model_uri"] or "not registered",
            "champion": info["promoted_to_champion"],
            "reason": info["reason"],
            "quality_gates": MetadataValue.json(info["quality_gates"]),
            "tracking_uri": info["tracking_uri"],
        },
    )
