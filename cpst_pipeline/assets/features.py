"""Feature asset, one partition per domain: backbone features cached per image content hash, so
only new images are computed."""


import pandas as pd
from dagster import AssetExecutionContext, DataVersion, MetadataValue, Output

from cpst_pipeline.assets.partitions import domain_asset
from cpst_pipeline.pipeline.domain_images import DomainImages, embed_domain_images
from cpst_pipeline.resources import CpstSettings


NOT_TRIED = "not tried: images under twice the default short side, no normal training images, or val without both classes"


@domain_asset(
    group_name="features",
    code_version="3",
    description="The domain's images with their gate embeddings (and PatchCore patch features where it gets a bank) in the feature store, "
    "at a heatmap resolution tried on val for large images: resized, or tiled near native resolution.",
)
def embeddings(context: AssetExecutionContext, settings: CpstSettings, splits: pd.DataFrame) -> Output[DomainImages]:
    config = settings.pipeline_config()
    images, computed = embed_domain_images(splits, context.partition_key, config, log=context.log.info)
    return Output(
        images,
        # From the images' content: unchanged images leave everything downstream up to date.
        data_version=DataVersion(images.version()),
        metadata={
            "backbone": images.backbone_key,
            "images": len(images.rows),
            "newly_embedded": computed,
            "gate_input": MetadataValue.json(list(images.inputs.gate_size)),
            "heatmap_input": images.inputs.describe_heatmap_input(),
            "heatmap_resolution": MetadataValue.json(images.resolution or {"chosen": "default", "reason": NOT_TRIED}),
            "store": MetadataValue.path(str(config.features_dir)),
        },
    )
