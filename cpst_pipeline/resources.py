"""Dagster resources: the pipeline settings and the IO manager that stores asset values without pickle."""


import os
from pathlib import Path

from dagster import ConfigurableResource, InitResourceContext, InputContext, MetadataValue, OutputContext, UPathIOManager, io_manager
from upath import UPath

from cpst_pipeline.cascade.calibration import CalibrationConfig
from cpst_pipeline.data.index_check import IndexCheckConfig
from cpst_pipeline.data.rules import IndexRules
from cpst_pipeline.cascade.serving import ServingConfig
from cpst_pipeline.data.splits import SplitConfig
from cpst_pipeline.features.backbone import BackboneConfig
from cpst_pipeline.features.embed import ResolutionConfig
from cpst_pipeline.patchcore.bank import BankConfig
from cpst_pipeline.pipeline.artifact_store import read_artifact, write_artifact
from cpst_pipeline.pipeline.config import PipelineConfig
from cpst_pipeline.pipeline.parallelism import set_compute_threads
from cpst_pipeline.pipeline.promotion import PromotionPolicy
from cpst_pipeline.pipeline.quality_gates import QualityBounds
from cpst_pipeline.pipeline.registry import RegistryConfig


class CpstSettings(ConfigurableResource):
    """What a user may change from the launchpad, env vars or ``definitions.py``."""

    data_dir: str = os.environ.get("CPST_DATA_DIR", "data")
    dataset_roots: str = os.environ.get("CPST_DATASET_ROOTS", "")
    device: str = os.environ.get("CPST_DEVICE", "auto")
    # Indexing: what a usable image is (see README, "Dataset layouts").
    min_image_short_side: int = IndexRules.min_short_side
    max_image_pixels: int = IndexRules.max_pixels
    blank_image_max_std: float = IndexRules.blank_max_std
    allow_symlinks_outside_root: bool = IndexRules.allow_symlinks_outside_root
    max_quarantine_share: float = IndexCheckConfig.max_quarantine_share
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
    # Threads of torch and faiss in each step process; 0 keeps their defaults (every core). Jobs that
    # run steps side by side set it so that the steps do not oversubscribe the cores.
    torch_threads: int = 0
    # Quality gates: a domain failing one blocks registration (see pipeline/quality_gates.py).
    max_false_positive_rate: float = 0.9
    min_auroc: float = 0.6
    min_val_defects: int = 3
    few_val_defects: str = "warn"  # or "fail"
    # Promotion: a challenger that drops a champion's domain is refused unless this is on.
    allow_dropped_domains: bool = False
    # Comma-separated folders whose images clients of the served model may name by path; empty: none.
    # Stored with each registered version.
    serving_path_roots: str = os.environ.get("CPST_SERVING_PATH_ROOTS", "")

    def setup_for_execution(self, context: InitResourceContext) -> None:
        if self.torch_threads > 0:
            set_compute_threads(self.torch_threads)

    def asset_storage_path(self) -> UPath:
        if self.asset_storage:
            return UPath(self.asset_storage)
        return UPath(Path(self.data_dir).resolve() / "artifacts" / "assets")

    def pipeline_config(self) -> PipelineConfig:
        return PipelineConfig(
            data_dir=Path(self.data_dir),
            dataset_roots=self.dataset_roots,
            device=self.device,
            index_rules=IndexRules(
                min_short_side=self.min_image_short_side,
                max_pixels=self.max_image_pixels,
                blank_max_std=self.blank_image_max_std,
                allow_symlinks_outside_root=self.allow_symlinks_outside_root,
            ),
            index_check=IndexCheckConfig(max_quarantine_share=self.max_quarantine_share),
            backbone=BackboneConfig(model_name=self.backbone, weights=self.weights),
            resolution=ResolutionConfig(heatmap_short_side=self.heatmap_short_side, gate_short_side=self.gate_short_side),
            splits=SplitConfig(seed=self.split_seed),
            bank=BankConfig(coreset_ratio=self.coreset_ratio),
            calibration=CalibrationConfig(target_recall=self.target_recall, max_call_rate=self.max_heatmap_call_rate),
        )

    def quality_bounds(self) -> QualityBounds:
        if self.few_val_defects not in ("warn", "fail"):
            raise ValueError(f"few_val_defects must be 'warn' or 'fail'; got {self.few_val_defects!r}")
        return QualityBounds(self.max_false_positive_rate, self.min_auroc, self.min_val_defects, self.few_val_defects)

    def registry_config(self) -> RegistryConfig:
        roots = tuple(str(Path(r.strip()).resolve()) for r in self.serving_path_roots.split(",") if r.strip())
        return RegistryConfig(self.model_name, ServingConfig(path_roots=roots), self.quality_bounds(), PromotionPolicy(self.allow_dropped_domains))


class ArtifactStore(UPathIOManager):
    """Stores each asset value (one per partition) as a folder of plain files; see pipeline.artifact_store."""

    def dump_to_path(self, context: OutputContext, obj, path: UPath) -> None:
        version = write_artifact(path, obj)
        context.add_output_metadata({"stored_version": MetadataValue.path(str(version))})

    def load_from_path(self, context: InputContext, path: UPath):
        return read_artifact(path)

    def load_input(self, context: InputContext):
        """A cross-domain asset (input typed ``dict``) gets ``{domain: value}`` for every domain, even
        for one, and a stored None (a domain without a memory bank) stays in it: Dagster's loader
        drops None values from several partitions (a missing partition raises before that)."""
        loaded = super().load_input(context)
        if not (context.has_asset_partitions and getattr(context.dagster_type.typing_type, "__origin__", None) is dict):
            return loaded
        keys = context.asset_partition_keys
        if len(keys) == 1:
            return {keys[0]: loaded}
        return {key: loaded.get(key) for key in keys}


@io_manager(required_resource_keys={"settings"}, description="Asset values as plain files under the settings' asset_storage.")
def artifact_io_manager(init_context: InitResourceContext) -> ArtifactStore:
    """Built from the ``settings`` resource as configured for this run, so the launchpad's
    ``data_dir`` or ``asset_storage`` moves artifacts and receipts together. (A nested resource
    would keep the settings it was defined with.)"""
    return ArtifactStore(init_context.resources.settings.asset_storage_path())
