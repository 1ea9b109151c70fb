"""Feature asset: backbone embeddings cached by content hash, so only new images are computed."""


import pandas as pd
from dagster import AssetExecutionContext, MetadataValue, Output, asset

from cpst_pipeline.pipeline import steps
from cpst_pipeline.resources import CpstSettings


@asset(group_name="features", description="Gate embeddings for every image and PatchCore patch features for banked domains (parquet).")
def embeddings(context: AssetExecutionContext, settings: CpstSettings, splits: pd.DataFrame) -> Output[dict]:
    config = settings.pipeline_config()
    summary = steps.embed_images(splits, config, log=context.log.info)
    sizes = steps.input_sizes(splits, config)
    summary["input_sizes"] = {d: {"gate": list(s.gate_size), "heatmap": list(s.heatmap_size)} for d, s in sizes.items()}
    return Output(
        summary,
        metadata={
            "backbone": summary["backbone_key"],
            "newly_embedded": sum(summary["computed"].values()),
            "images": summary["images"],
            "per_domain": MetadataValue.json(summary["computed"]),
            "input_sizes": MetadataValue.json(summary["input_sizes"]),
            "store": MetadataValue.path(str(config.features_dir)),
        },
    )
