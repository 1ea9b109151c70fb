"""Dagster resources: the pipeline settings and the IO manager that stores asset values without pickle."""


import os
from pathlib import Path

from dagster import ConfigurableResource, InitResourceContext, InputContext, MetadataValue, OutputContext, UPathIOManager, io_manager
from upath import UPath

from cpst_pipeline.cascade.calibration import CalibrationConfig
from cpst_pipeline.data.splits import SplitConfig
from cpst_pipeline.features.backbone import BackboneConfig
from cpst_pipeline.features.embed import ResolutionConfig
from cpst_pipeline.patchcore.bank import BankConfig
from cpst_pipeline.pipeline.artifact_store import read_artifact, write_artifact
from cpst_pipeline.pipeline.config import PipelineConfig


class CpstSettings(ConfigurableResource):
    """What a user may change from the launchpad, env vars or ``definitions.py``."""

    data_dir: str = os.environ.get("CPST_DATA_DIR", "data")
    dataset_roots: str = os.environ.get("CPST_DATASET_ROOTS", "")
    device: str = os.environ.get("CPST_DEVICE", "auto")
    backbone: str = "tf_efficientnet_lite0"
    weights: str = "bundled"
    heatmap_short_side: int = 256
    gate_short_side: int = 128
    coreset_ratio: float = 0.1
    target_recall: float = 0.95
    max_heatmap_call_rate: float = 0.35
    split_seed: int = 0
    model_name: str = "cpst-cascade"
    # Where asset values live: any fsspec URL (e.g. s3://bucket/cpst for workers on several
    # machines); empty means <data_dir>/artifacts/assets.
    asset_storage: str = os.environ.get("CPST_ASSET_STORAGE", "")

    def asset_storage_path(self) -> UPath:
        if self.asset_storage:
            return UPath(self.asset_storage)
        return UPath(Path(self.data_dir).resolve() / "artifacts" / "assets")

    def pipeline_config(self) -> PipelineConfig:
        return PipelineConfig(
            data_dir=Path(self.data_dir),
            dataset_roots=self.dataset_roots,
            device=self.device,
            backbone=BackboneConfig(model_name=self.backbone, weights=self.weights),
            resolution=ResolutionConfig(heatmap_short_side=self.heatmap_short_side, gate_short_side=self.gate_short_side),
            splits=SplitConfig(seed=self.split_seed),
            bank=BankConfig(coreset_ratio=self.coreset_ratio),
            calibration=CalibrationConfig(target_recall=self.target_recall, max_call_rate=self.max_heatmap_call_rate),
        )


class ArtifactStore(UPathIOManager):
    """Stores each asset value (one per partition) as a folder of plain files; see pipeline.artifact_store."""

    def dump_to_path(self, context: OutputContext, obj, path: UPath) -> None:
        version = write_artifact(path, obj)
        context.add_output_metadata({"stored_version": MetadataValue.path(str(version))})

    def load_from_path(self, context: InputContext, path: UPath):
        return read_artifact(path)

    def load_input(self, context: InputContext):
        """A cross-domain asset (input typed ``dict``) gets ``{domain: value}`` even for one domain."""
        loaded = super().load_input(context)
        if not (context.has_asset_partitions and getattr(context.dagster_type.typing_type, "__origin__", None) is dict):
            return loaded
        keys = context.asset_partition_keys
        if not keys:
            return {}
        return {keys[0]: loaded} if len(keys) == 1 else loaded


@io_manager(required_resource_keys={"settings"}, description="Asset values as plain files under the settings' asset_storage.")
def artifact_io_manager(init_context: InitResourceContext) -> ArtifactStore:
    """Built from the ``settings`` resource as configured for this run, so the launchpad's
    ``data_dir`` or ``asset_storage`` moves artifacts and receipts together. (A nested resource
    would keep the settings it was defined with.)"""
    return ArtifactStore(init_context.resources.settings.asset_storage_path())
