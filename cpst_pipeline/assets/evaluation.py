"""Calibration, evaluation and registration assets."""


from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from dagster import AssetExecutionContext, MetadataValue, Output, asset

from cpst_pipeline.assets.metadata import number, progress_logger
from cpst_pipeline.pipeline import registry, steps
from cpst_pipeline.resources import CpstSettings


@asset(group_name="evaluation", description="Per-domain score normalisation, heatmap threshold and gate band [T_low, T_high) on val_mix (JSON).")
def calibration(settings: CpstSettings, splits: pd.DataFrame, gate_model: dict, memory_banks: dict) -> Output[dict]:
    info = steps.calibrate(splits, gate_model, memory_banks, settings.pipeline_config())
    table = pd.DataFrame(
        {d: {"T_low": c["gate_low"], "T_high": c["gate_high"], "heatmap_threshold": c["heatmap_threshold"], **c["val"]} for d, c in info["domains"].items()}
    ).T
    return Output(info, metadata={"calibration": MetadataValue.md(table.to_markdown()), "path": MetadataValue.path(info["path"])})


@asset(group_name="evaluation", description="Cascade vs always-heatmap on test_mix: metrics, latency, plots, HTML + JSON report.")
def evaluation_report(
    context: AssetExecutionContext, settings: CpstSettings, splits: pd.DataFrame, gate_model: dict, memory_banks: dict, calibration: dict
) -> Output[dict]:
    config = settings.pipeline_config()
    cascade_dir = steps.assemble_cascade(splits, gate_model, memory_banks, calibration, config)
    run_info = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": config.dataset_roots or "generated demo dataset",
        "backbone": config.backbone.key(),
        "target_recall": config.calibration.target_recall,
    }
    info = steps.evaluate(splits, cascade_dir, config, run_info, progress_logger(context, "scoring test images"))
    info["mlflow_run_id"] = registry.log_evaluation_run(info, config)
    overall = info["report"]["overall"] or {}
    cascade = overall.get("cascade") or {}
    return Output(
        info,
        metadata={
            "summary": MetadataValue.md(info["markdown"]),
            "cascade_recall": number(cascade.get("recall")),
            "cascade_auroc": number(cascade.get("auroc")),
            "heatmap_call_rate": number(overall.get("heatmap_call_rate")),
            "report_html": MetadataValue.path(str(Path(info["directory"]) / "report.html")),
            "mlflow_run_id": info["mlflow_run_id"],
        },
    )


@asset(
    group_name="evaluation",
    description="The cascade as an MLflow pyfunc model, if every domain passes the quality gates: new version = challenger, champion by the promotion rule.",
)
def registered_model(context: AssetExecutionContext, settings: CpstSettings, splits: pd.DataFrame, evaluation_report: dict) -> Output[dict]:
    test = splits[splits["split"] == "test_mix"]
    info = registry.register_cascade(
        evaluation_report, evaluation_report["mlflow_run_id"], test, settings.pipeline_config(), settings.registry_config(), log=context.log.info
    )
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
