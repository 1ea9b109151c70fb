"""The deployable cascade: backbone + gate + per-domain banks + calibration, loaded from plain files.

Directory layout (no pickle anywhere)::

    cascade.json                 backbone config, resolutions, per-domain input sizes, scoring config
    calibration.json             per-domain thresholds (see cascade.policy)
    router.json                  domain centroids for images that come without a domain, and radii
    router_references.npy        training gate embeddings an image must be near to count as of its domain
    gate/gate.safetensors, gate/gate.json
    banks/<domain>/coreset.npy, index.faiss, bank.json, position_mean.npy, position_std.npy
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cpst_pipeline.cascade.policy import DECISION_THRESHOLD, UNKNOWN_DOMAIN_SCORE, DomainCalibration, cascade_score
from cpst_pipeline.features.backbone import BackboneConfig
from cpst_pipeline.cascade.router import DomainRouter
from cpst_pipeline.features.embed import DomainInputs, ResolutionConfig
from cpst_pipeline.features.extractor import FeatureExtractor
from cpst_pipeline.features.preprocess import fit_input_size
from cpst_pipeline.gate.model import GateNet, load_gate
from cpst_pipeline.io_utils import write_json_atomic
from cpst_pipeline.patchcore.bank import MemoryBank, load_memory_bank
from cpst_pipeline.patchcore.scoring import ScoringConfig, anomaly_map, score_patches

# Bumped whenever the directory layout changes, so cached cascades are rebuilt.
CASCADE_FORMAT = 3
UNKNOWN_DOMAIN_REASON = "looks like none of the known domains"


@dataclass
class Prediction:
    domain: str | None  # None: the image looks like no known domain (flagged, never scored against a bank)
    gate_score: float
    heatmap_ran: bool
    heatmap_score: float | None  # normalised; None when the heatmap did not run
    anomaly_score: float
    is_anomaly: bool
    anomaly_map: np.ndarray | None  # (H, W) normalised, at the image's own size
    seconds: dict[str, float] = field(default_factory=dict)
    reason: str | None = None  # why an image was flagged without being scored (unknown / unlike its domain)


def write_cascade_directory(
    directory: Path,
    backbone: BackboneConfig,
    resolution: ResolutionConfig,
    inputs: dict[str, DomainInputs],
    scoring: ScoringConfig,
    gate_dir: Path,
    bank_dirs: dict[str, Path],
    calibrations: dict[str, DomainCalibration],
    router: DomainRouter,
) -> Path:
    """Assemble a self-contained cascade directory from the pipeline's artifacts."""
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    shutil.copytree(gate_dir, directory / "gate")
    for domain, bank_dir in bank_dirs.items():
        shutil.copytree(bank_dir, directory / "banks" / domain)
    write_json_atomic(directory / "calibration.json", {d: c.to_dict() for d, c in calibrations.items()})
    router.save(directory / "router.json")
    spec = {
        "backbone": asdict(backbone),
        "resolution": asdict(resolution),
        "scoring": asdict(scoring),
        "domains": {d: {"gate_size": list(i.gate_size), "heatmap_size": list(i.heatmap_size)} for d, i in inputs.items()},
    }
    write_json_atomic(directory / "cascade.json", spec)
    return directory


class CascadeModel:
    def __init__(
        self,
        extractor: FeatureExtractor,
        gate: GateNet,
        banks: dict[str, MemoryBank],
        calibrations: dict[str, DomainCalibration],
        inputs: dict[str, DomainInputs],
        scoring: ScoringConfig,
        resolution: ResolutionConfig,
        router: DomainRouter,
    ):
        self.extractor = extractor
        self.gate = gate
        self.banks = banks
        self.calibrations = calibrations
        self.inputs = inputs
        self.scoring = scoring
        self.resolution = resolution
        self.router = router

    @classmethod
    def load(cls, directory: Path, device: str = "auto") -> "CascadeModel":
        directory = Path(directory)
        spec = json.loads((directory / "cascade.json").read_text())
        backbone = BackboneConfig(**{**spec["backbone"], "feature_layers": tuple(spec["backbone"]["feature_layers"])})
        inputs = {
            d: DomainInputs(gate_size=tuple(s["gate_size"]), heatmap_size=tuple(s["heatmap_size"]))
            for d, s in spec["domains"].items()
        }
        calibrations = {
            d: DomainCalibration.from_dict(c) for d, c in json.loads((directory / "calibration.json").read_text()).items()
        }
        banks_root = directory / "banks"
        banks = {p.name: load_memory_bank(p) for p in sorted(banks_root.iterdir())} if banks_root.exists() else {}
        return cls(
            FeatureExtractor(backbone, device),
            load_gate(directory / "gate"),
            banks,
            calibrations,
            inputs,
            ScoringConfig(**spec["scoring"]),
            ResolutionConfig(**spec["resolution"]),
            DomainRouter.load(directory / "router.json"),
        )

    @property
    def domains(self) -> list[str]:
        return sorted(self.calibrations)

    def _check_domain(self, domain: str) -> DomainCalibration:
        if domain not in self.calibrations:
            raise ValueError(f"unknown domain {domain!r}; this model knows {self.domains}")
        return self.calibrations[domain]

    def gate_embedding(self, image: np.ndarray, domain: str, seconds: dict[str, float]) -> torch.Tensor:
        started = time.perf_counter()
        embedding = self.extractor.image_embedding(self.extractor.batch([image], self.inputs[domain].gate_size)).cpu()
        seconds["gate_backbone"] = time.perf_counter() - started
        return embedding

    def gate_score(self, embedding: torch.Tensor, domain: str, seconds: dict[str, float]) -> float:
        started = time.perf_counter()
        score = float(self.gate.predict_proba(embedding, [domain])[0])
        seconds["gate_head"] = time.perf_counter() - started
        return score

    def route(self, image: np.ndarray) -> str | None:
        """The domain an unlabelled image belongs to, or None if it looks like none of them."""
        size = fit_input_size(image.shape[0], image.shape[1], self.resolution.gate_short_side, self.resolution.max_aspect)
        embedding = self.extractor.image_embedding(self.extractor.batch([image], size)).cpu().numpy()
        return self.router.route(embedding)[0]

    def heatmap(self, image: np.ndarray, domain: str, seconds: dict[str, float]) -> tuple[float, np.ndarray]:
        """Normalised image score and anomaly map from the domain's memory bank."""
        calibration, bank, size = self.calibrations[domain], self.banks[domain], self.inputs[domain].heatmap_size
        started = time.perf_counter()
        patches = self.extractor.patch_features(self.extractor.batch([image], size))[0].cpu().numpy()
        seconds["heatmap_backbone"] = time.perf_counter() - started
        started = time.perf_counter()
        scores = score_patches(bank, patches, self.scoring)
        seconds["knn"] = time.perf_counter() - started
        started = time.perf_counter()
        raw_map = anomaly_map(scores.grid, size, image.shape[:2], self.scoring.map_sigma)
        normalised_map = (raw_map - calibration.score_center) / calibration.score_scale
        seconds["map"] = time.perf_counter() - started
        return calibration.normalise(scores.image_score), normalised_map.astype(np.float32)

    def predict(self, image: np.ndarray, domain: str | None = None, force_heatmap: bool = False) -> Prediction:
        """Score one uint8 image, (H, W) grey or (H, W, 3) RGB. Without ``domain`` the router picks
        one; an image that fits no domain, or is unlike every training image of its domain, is
        flagged (``is_anomaly`` True, ``reason`` says why, for review) rather than scored.
        ``force_heatmap`` runs the heatmap even when the gate is sure (for the always-heatmap
        baseline); the decision still follows the cascade."""
        seconds: dict[str, float] = {}
        if domain is None:
            started = time.perf_counter()
            domain = self.route(image)
            seconds["route"] = time.perf_counter() - started
            if domain is None:
                return Prediction(None, math.nan, False, None, UNKNOWN_DOMAIN_SCORE, True, None, seconds, UNKNOWN_DOMAIN_REASON)
        calibration = self._check_domain(domain)
        embedding = self.gate_embedding(image, domain, seconds)
        gate_score = self.gate_score(embedding, domain, seconds)
        # A blank frame or another product is flagged: a score would mean nothing for it.
        unlike = self.router.unlike_domain(embedding.numpy(), domain)
        called = unlike is None and calibration.needs_heatmap(gate_score)
        heatmap_score, heatmap_map = None, None
        if called or (force_heatmap and calibration.has_bank):
            heatmap_score, heatmap_map = self.heatmap(image, domain, seconds)
        if unlike is not None:
            return Prediction(domain, gate_score, False, heatmap_score, UNKNOWN_DOMAIN_SCORE, True, heatmap_map, seconds, unlike)
        score = cascade_score(calibration, gate_score, heatmap_score if called else None)
        return Prediction(
            domain=domain,
            gate_score=gate_score,
            heatmap_ran=called,
            heatmap_score=heatmap_score,
            anomaly_score=score,
            is_anomaly=score >= DECISION_THRESHOLD,
            anomaly_map=heatmap_map,
            seconds=seconds,
        )

