"""Dagster resources: the pipeline settings and the IO manager that stores asset values without pickle."""


import json
import os
from pathlib import Path

import pandas as pd
from dagster import ConfigurableIOManager, ConfigurableResource, InitResourceContext, InputContext, OutputContext

from cpst_pipeline.cascade.calibration import CalibrationConfig
from cpst_pipeline.data.index_check import IndexCheckConfig
from cpst_pipeline.data.rules import IndexRules
from cpst_pipeline.cascade.serving import ServingConfig
from cpst_pipeline.data.splits import SplitConfig
from cpst_pipeline.features.backbone import BackboneConfig
from cpst_pipeline.features.embed import ResolutionConfig
from cpst_pipeline.io_utils import atomic_path, write_json_atomic
from cpst_pipeline.patchcore.bank import BankConfig
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
    # Threads of torch and faiss in each step process; 0 keeps their defaults (every core). Jobs that
    # run steps side by side set it so that the steps do not oversubscribe the cores.
    torch_threads: int = 0

    def setup_for_execution(self, context: InitResourceContext) -> None:
        if self.torch_threads > 0:
            set_compute_threads(self.torch_threads)
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


class ArtifactIOManager(ConfigurableIOManager):
    """DataFrames as parquet, everything else as JSON, one file per asset, written atomically."""

    base_dir: str

    def _path(self, asset_key_path: list[str], suffix: str) -> Path:
        return Path(self.base_dir).resolve().joinpath(*asset_key_path).with_suffix(suffix)

    def handle_output(self, context: OutputContext, obj) -> None:
        if isinstance(obj, pd.DataFrame):
            with atomic_path(self._path(context.asset_key.path, ".parquet")) as tmp:
                obj.to_parquet(tmp, index=False)
        else:
            write_json_atomic(self._path(context.asset_key.path, ".json"), obj)

    def load_input(self, context: InputContext):
        parquet = self._path(context.asset_key.path, ".parquet")
        if parquet.exists():
            return pd.read_parquet(parquet)
        path = self._path(context.asset_key.path, ".json")
        if not path.exists():
            raise FileNotFoundError(f"{context.asset_key.to_user_string()} has not been materialized yet ({path} missing)")
        return json.loads(path.read_text())
