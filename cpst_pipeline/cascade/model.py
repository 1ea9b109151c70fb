"""The deployable cascade: backbone + per-domain gates, banks and calibration, loaded from plain files.

Directory layout (no pickle anywhere)::

    cascade.json                 backbone config, resolutions, per-domain input sizes, scoring config
    calibration.json             per-domain thresholds (see cascade.policy)
    router.json                  domain centroids for images that come without a domain
    gates/<domain>/gate.safetensors, gates/<domain>/gate.json
    banks/<domain>/coreset.npy, index.faiss, bank.json, position_mean.npy, position_std.npy
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cpst_pipeline.cascade.policy import DECISION_THRESHOLD, UNKNOWN_DOMAIN_SCORE, DomainCalibration, cascade_score
from cpst_pipeline.features.backbone import BackboneConfig
from cpst_pipeline.cascade.router import DomainRouter
from cpst_pipeline.features.embed import DomainInputs, ResolutionConfig
from cpst_pipeline.features.extractor import FeatureExtractor
from cpst_pipeline.features.preprocess import fit_input_size
from cpst_pipeline.gate.model import GateNet, load_gate, save_gate
from cpst_pipeline.io_utils import write_json_atomic
from cpst_pipeline.patchcore.bank import MemoryBank, load_memory_bank, save_memory_bank
from cpst_pipeline.patchcore.scoring import ScoringConfig, anomaly_map, score_patches

# Bumped whenever the directory layout changes (3: one gate per domain).
CASCADE_FORMAT = 3


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


@dataclass
class CascadeArtifacts:
    """Everything a cascade is made of, as loaded objects; a directory of plain files on disk."""

    backbone: BackboneConfig
    resolution: ResolutionConfig
    scoring: ScoringConfig
    inputs: dict[str, DomainInputs]
    gates: dict[str, GateNet]
    banks: dict[str, MemoryBank]
    calibrations: dict[str, DomainCalibration]
    router: DomainRouter


def save_cascade(artifacts: CascadeArtifacts, directory: Path) -> Path:
    """Write the cascade directory (layout in the module doc) into an empty or new ``directory``."""
    directory = Path(directory)
    for domain, gate in artifacts.gates.items():
        save_gate(gate, directory / "gates" / domain)
    for domain, bank in artifacts.banks.items():
        save_memory_bank(bank, directory / "banks" / domain)
    write_json_atomic(directory / "calibration.json", {d: c.to_dict() for d, c in artifacts.calibrations.items()})
    artifacts.router.save(directory / "router.json")
    spec = {
        "format": CASCADE_FORMAT,
        "backbone": asdict(artifacts.backbone),
        "resolution": asdict(artifacts.resolution),
        "scoring": asdict(artifacts.scoring),
        "domains": {d: {"gate_size": list(i.gate_size), "heatmap_size": list(i.heatmap_size)} for d, i in artifacts.inputs.items()},
    }
    write_json_atomic(directory / "cascade.json", spec)
    return directory


def load_cascade(directory: Path) -> CascadeArtifacts:
    directory = Path(directory)
    spec = json.loads((directory / "cascade.json").read_text())
    if spec.get("format") != CASCADE_FORMAT:
        raise ValueError(f"{directory} holds cascade format {spec.get('format')}, this code reads {CASCADE_FORMAT}; re-materialize the cascade")
    subfolders = lambda name: sorted(p for p in (directory / name).iterdir()) if (directory / name).exists() else []  # noqa: E731
    return CascadeArtifacts(
        backbone=BackboneConfig(**{**spec["backbone"], "feature_layers": tuple(spec["backbone"]["feature_layers"])}),
        resolution=ResolutionConfig(**spec["resolution"]),
        scoring=ScoringConfig(**spec["scoring"]),
        inputs={d: DomainInputs(gate_size=tuple(s["gate_size"]), heatmap_size=tuple(s["heatmap_size"])) for d, s in spec["domains"].items()},
        gates={p.name: load_gate(p) for p in subfolders("gates")},
        banks={p.name: load_memory_bank(p) for p in subfolders("banks")},
        calibrations={d: DomainCalibration.from_dict(c) for d, c in json.loads((directory / "calibration.json").read_text()).items()},
        router=DomainRouter.load(directory / "router.json"),
    )


class CascadeModel:
    def __init__(self, extractor: FeatureExtractor, artifacts: CascadeArtifacts):
        self.extractor = extractor
        self.gates = artifacts.gates
        self.banks = artifacts.banks
        self.calibrations = artifacts.calibrations
        self.inputs = artifacts.inputs
        self.scoring = artifacts.scoring
        self.resolution = artifacts.resolution
        self.router = artifacts.router

    @classmethod
    def from_artifacts(cls, artifacts: CascadeArtifacts, device: str = "auto") -> "CascadeModel":
        return cls(FeatureExtractor(artifacts.backbone, device), artifacts)

    @classmethod
    def load(cls, directory: Path, device: str = "auto") -> "CascadeModel":
        return cls.from_artifacts(load_cascade(directory), device)

    @property
    def domains(self) -> list[str]:
        return sorted(self.calibrations)

    def _check_domain(self, domain: str) -> DomainCalibration:
        if domain not in self.calibrations:
            raise ValueError(f"unknown domain {domain!r}; this model knows {self.domains}")
        return self.calibrations[domain]

    def gate_score(self, image: np.ndarray, domain: str, seconds: dict[str, float]) -> float:
        started = time.perf_counter()
        batch = self.extractor.batch([image], self.inputs[domain].gate_size)
        embedding = self.extractor.image_embedding(batch)
        seconds["gate_backbone"] = time.perf_counter() - started
        started = time.perf_counter()
        score = float(self.gates[domain].predict_proba(embedding.cpu(), [domain])[0])
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
        one; an image that fits no domain is flagged (``is_anomaly`` True, for review) rather than
        scored against a wrong bank.
        ``force_heatmap`` runs the heatmap even when the gate is sure (for the always-heatmap
        baseline); the decision still follows the cascade."""
        seconds: dict[str, float] = {}
        if domain is None:
            started = time.perf_counter()
            domain = self.route(image)
            seconds["route"] = time.perf_counter() - started
            if domain is None:
                return Prediction(None, math.nan, False, None, UNKNOWN_DOMAIN_SCORE, True, None, seconds)
        calibration = self._check_domain(domain)
        gate_score = self.gate_score(image, domain, seconds)
        called = calibration.needs_heatmap(gate_score)
        heatmap_score, heatmap_map = None, None
        if called or (force_heatmap and calibration.has_bank):
            heatmap_score, heatmap_map = self.heatmap(image, domain, seconds)
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

