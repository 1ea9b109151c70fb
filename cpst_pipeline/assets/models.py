"""Model assets: the gate and the per-domain PatchCore memory banks."""


import pandas as pd
from dagster import AssetExecutionContext, MetadataValue, Output, asset

from cpst_pipeline.assets.metadata import number
from cpst_pipeline.pipeline import steps
from cpst_pipeline.resources import CpstSettings


@asset(group_name="models", deps=["embeddings"], description="Gate MLP trained on train_mix (both classes) plus train_normal, class-balanced per domain; safetensors checkpoint.")
def gate_model(context: AssetExecutionContext, settings: CpstSettings, splits: pd.DataFrame) -> Output[dict]:
    info = steps.fit_gate(splits, settings.pipeline_config())
    context.log.info(f"gate {'reused' if info['reused'] else 'trained'}: val AUROC {info['val_auroc']}")
    return Output(
        info,
        metadata={
            "val_auroc": number(info["val_auroc"]),
            "val_auroc_by_domain": MetadataValue.json(info["val_auroc_by_domain"]),
            "reused": info["reused"],
            "train_seconds": info["train_seconds"],
            "checkpoint": MetadataValue.path(info["path"]),
        },
    )


@asset(group_name="models", deps=["embeddings"], description="One greedy-coreset PatchCore bank + faiss index per domain with normal images.")
def memory_banks(context: AssetExecutionContext, settings: CpstSettings, splits: pd.DataFrame) -> Output[dict]:
    info = steps.build_banks(splits, settings.pipeline_config(), log=context.log.info)
    table = pd.DataFrame.from_dict(info["banks"], orient="index")[["images", "source_patches", "coreset_patches", "bytes", "build_seconds", "reused"]]
    return Output(
        info,
        metadata={
            "banks": MetadataValue.md(table.to_markdown()),
            "skipped_domains": MetadataValue.json(info["skipped"]),
            "total_build_seconds": float(table["build_seconds"][~table["reused"]].sum()),
        },
    )
