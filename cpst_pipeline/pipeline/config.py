"""One typed configuration for the whole pipeline, plus the content keys that make rebuilds incremental."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cpst_pipeline.cascade.calibration import CalibrationConfig
from cpst_pipeline.data.index_check import IndexCheckConfig
from cpst_pipeline.data.rules import IndexRules
from cpst_pipeline.data.splits import SplitConfig
from cpst_pipeline.features.backbone import BackboneConfig
from cpst_pipeline.features.embed import ResolutionConfig
from cpst_pipeline.features.resolution import ResolutionTrialConfig
from cpst_pipeline.gate.train import GateTrainConfig
from cpst_pipeline.patchcore.bank import BankConfig
from cpst_pipeline.patchcore.scoring import ScoringConfig
from cpst_pipeline.patchcore.search_probes import ProbeRule


@dataclass(frozen=True)
class PipelineConfig:
    data_dir: Path = Path("data")
    # Comma-separated "[layout=]path" entries; empty means the generated demo dataset.
    dataset_roots: str = ""
    device: str = "auto"
    batch_size: int = 16
    index_rules: IndexRules = field(default_factory=IndexRules)
    index_check: IndexCheckConfig = field(default_factory=IndexCheckConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    resolution: ResolutionConfig = field(default_factory=ResolutionConfig)
    resolution_trial: ResolutionTrialConfig = field(default_factory=ResolutionTrialConfig)
    splits: SplitConfig = field(default_factory=SplitConfig)
    gate: GateTrainConfig = field(default_factory=GateTrainConfig)
    bank: BankConfig = field(default_factory=BankConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    search_probes: ProbeRule = field(default_factory=ProbeRule)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    @property
    def artifacts_dir(self) -> Path:
        return Path(self.data_dir).resolve() / "artifacts"

    @property
    def demo_dir(self) -> Path:
        return Path(self.data_dir).resolve() / "demo"

    @property
    def features_dir(self) -> Path:
        return self.artifacts_dir / "features"


def content_key(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (dataclasses allowed): same inputs, same artifact."""
    payload = json.dumps([asdict(p) if hasattr(p, "__dataclass_fields__") else p for p in parts], sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]
