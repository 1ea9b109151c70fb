"""The deployable cascade: backbone + per-domain gates, banks and calibration, loaded from plain files.

Directory layout (no pickle anywhere)::

    cascade.json                 backbone config, resolutions, per-domain input sizes, scoring config
    calibration.json             per-domain thresholds (see cascade.policy)
    router.json                  domain centroids for images that come without a domain, and radii
    router_references.npy        training gate embeddings an image must be near to count as of its domain
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
import torch

from cpst_pipeline.cascade.policy import DECISION_THRESHOLD, UNKNOWN_DOMAIN_SCORE, DomainCalibration, cascade_score
from cpst_pipeline.features.backbone import BackboneConfig
from cpst_pipeline.cascade.router import DomainRouter
from cpst_pipeline.features.embed import DomainInputs, ResolutionConfig, domain_inputs_from_json, heatmap_features
from cpst_pipeline.features.extractor import FeatureExtractor
from cpst_pipeline.features.preprocess import fit_input_size
from cpst_pipeline.gate.model import GateNet, load_gate, save_gate
from cpst_pipeline.io_utils import write_json_atomic
from cpst_pipeline.patchcore.bank import MemoryBank, load_memory_bank, save_memory_bank
from cpst_pipeline.patchcore.image_scores import score_image
from cpst_pipeline.patchcore.scoring import ScoringConfig

# Bumped whenever the directory layout changes (4: one gate per domain; 5: a domain may be
# tiled). An untiled cascade is still written as 4, so code that predates tiles reads it, and
# refuses a tiled one instead of scoring it as a resized image.
CASCADE_FORMAT = 5
UNTILED_CASCADE_FORMAT = 4
UNKNOWN_DOMAIN_REASON = "looks like none of the known domains"
# Images per backbone pass when predicting a batch: bounds memory for large requests.
BACKBONE_BATCH = 16


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
    domains = {d: {"gate_size": list(i.gate_size), "heatmap_size": list(i.heatmap_size)} for d, i in artifacts.inputs.items()}
    for domain, inputs in artifacts.inputs.items():
        if inputs.tiling is not None:
            domains[domain]["tiling"] = asdict(inputs.tiling)
    spec = {
        "format": CASCADE_FORMAT if any(i.tiling for i in artifacts.inputs.values()) else UNTILED_CASCADE_FORMAT,
        "backbone": asdict(artifacts.backbone),
        "resolution": asdict(artifacts.resolution),
        "scoring": asdict(artifacts.scoring),
        "domains": domains,
    }
    write_json_atomic(directory / "cascade.json", spec)
    return directory


def load_cascade(directory: Path) -> CascadeArtifacts:
    directory = Path(directory)
    spec = json.loads((directory / "cascade.json").read_text())
    if spec.get("format") not in (UNTILED_CASCADE_FORMAT, CASCADE_FORMAT):
        raise ValueError(f"{directory} holds cascade format {spec.get('format')}, this code reads {CASCADE_FORMAT}; re-materialize the cascade")
    subfolders = lambda name: sorted(p for p in (directory / name).iterdir()) if (directory / name).exists() else []  # noqa: E731
    return CascadeArtifacts(
        backbone=BackboneConfig(**{**spec["backbone"], "feature_layers": tuple(spec["backbone"]["feature_layers"])}),
        resolution=ResolutionConfig(**spec["resolution"]),
        scoring=ScoringConfig(**spec["scoring"]),
        inputs={d: domain_inputs_from_json(s) for d, s in spec["domains"].items()},
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

    def gate_scores(self, images: list[np.ndarray], domain: str, seconds: list[dict[str, float]]) -> tuple[np.ndarray, np.ndarray]:
        """Gate probabilities and gate embeddings of one domain's images, through the backbone together."""
        started = time.perf_counter()
        embeddings = torch.cat(
            [self.extractor.image_embedding(self.extractor.batch(chunk, self.inputs[domain].gate_size)) for chunk in _chunks(images)]
        ).cpu()
        _record_share(seconds, "gate_backbone", started)
        started = time.perf_counter()
        scores = self.gates[domain].predict_proba(embeddings, [domain] * len(images)).numpy().astype(float)
        _record_share(seconds, "gate_head", started)
        return scores, embeddings.numpy()

    def route(self, image: np.ndarray) -> str | None:
        """The domain an unlabelled image belongs to, or None if it looks like none of them."""
        return self.route_batch([image])[0]

    def route_batch(self, images: list[np.ndarray]) -> list[str | None]:
        """``route`` for several images; images with the same gate input size share a backbone pass."""
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            size = fit_input_size(image.shape[0], image.shape[1], self.resolution.gate_short_side, self.resolution.max_aspect)
            by_size.setdefault(size, []).append(i)
        routed: list[str | None] = [None] * len(images)
        for size, members in by_size.items():
            for chunk in _chunks(members):
                embedding = self.extractor.image_embedding(self.extractor.batch([images[i] for i in chunk], size)).cpu().numpy()
                for i, domain in zip(chunk, self.router.route(embedding)):
                    routed[i] = domain
        return routed

    def heatmaps(self, images: list[np.ndarray], domain: str, seconds: list[dict[str, float]]) -> list[tuple[float, np.ndarray]]:
        """Normalised image score and anomaly map of each of one domain's images, from its memory bank."""
        calibration, bank, inputs = self.calibrations[domain], self.banks[domain], self.inputs[domain]
        started = time.perf_counter()
        patches = [features for chunk in _chunks(images) for features in heatmap_features(self.extractor, chunk, inputs)]
        _record_share(seconds, "heatmap_backbone", started)
        results = []
        for image, image_patches, image_seconds in zip(images, patches, seconds):
            started = time.perf_counter()
            scores = score_image(bank, image_patches, image.shape[:2], inputs, self.scoring)
            image_seconds["knn"] = time.perf_counter() - started
            started = time.perf_counter()
            raw_map = scores.anomaly_map(image.shape[:2], self.scoring.map_sigma)
            normalised_map = (raw_map - calibration.score_center) / calibration.score_scale
            image_seconds["map"] = time.perf_counter() - started
            results.append((calibration.normalise(scores.image_score), normalised_map.astype(np.float32)))
        return results

    def predict(self, image: np.ndarray, domain: str | None = None, force_heatmap: bool = False) -> Prediction:
        """Score one uint8 image, (H, W) grey or (H, W, 3) RGB. Without ``domain`` the router picks
        one; an image that fits no domain, or is unlike every training image of its domain, is
        flagged (``is_anomaly`` True, ``reason`` says why, for review) rather than scored.
        ``force_heatmap`` runs the heatmap even when the gate is sure (for the always-heatmap
        baseline); the decision still follows the cascade."""
        return self.predict_batch([image], [domain], force_heatmap)[0]

    def predict_batch(self, images: list[np.ndarray], domains: list[str | None] | None = None, force_heatmap: bool = False) -> list[Prediction]:
        """``predict`` for several images: the images of one domain go through the backbone together
        (in chunks of ``BACKBONE_BATCH``). ``seconds`` holds each image's share of its batches' time."""
        domains = list(domains) if domains is not None else [None] * len(images)
        if len(domains) != len(images):
            raise ValueError(f"{len(images)} images but {len(domains)} domains")
        for domain in {d for d in domains if d is not None}:
            self._check_domain(domain)
        seconds: list[dict[str, float]] = [{} for _ in images]
        unlabelled = [i for i, d in enumerate(domains) if d is None]
        if unlabelled:
            started = time.perf_counter()
            for i, routed in zip(unlabelled, self.route_batch([images[i] for i in unlabelled])):
                domains[i] = routed
            _record_share([seconds[i] for i in unlabelled], "route", started)
        predictions: list[Prediction | None] = [None] * len(images)
        for i, domain in enumerate(domains):
            if domain is None:
                predictions[i] = Prediction(None, math.nan, False, None, UNKNOWN_DOMAIN_SCORE, True, None, seconds[i], UNKNOWN_DOMAIN_REASON)
        for domain in sorted({d for d in domains if d is not None}):
            members = [i for i, d in enumerate(domains) if d == domain]
            calibration = self.calibrations[domain]
            gate_scores, embeddings = self.gate_scores([images[i] for i in members], domain, [seconds[i] for i in members])
            # A blank frame or another product is flagged: a score would mean nothing for it.
            unlike = [self.router.unlike_domain(embeddings[k : k + 1], domain) for k in range(len(members))]
            called = [u is None and calibration.needs_heatmap(g) for g, u in zip(gate_scores, unlike)]
            wanted = [i for i, c in zip(members, called) if c or (force_heatmap and calibration.has_bank)]
            heatmaps = dict(zip(wanted, self.heatmaps([images[i] for i in wanted], domain, [seconds[i] for i in wanted]))) if wanted else {}
            for i, gate_score, heatmap_ran, reason in zip(members, gate_scores, called, unlike):
                heatmap_score, heatmap_map = heatmaps.get(i, (None, None))
                if reason is not None:
                    predictions[i] = Prediction(domain, float(gate_score), False, heatmap_score, UNKNOWN_DOMAIN_SCORE, True, heatmap_map, seconds[i], reason)
                    continue
                score = cascade_score(calibration, float(gate_score), heatmap_score if heatmap_ran else None)
                predictions[i] = Prediction(
                    domain=domain,
                    gate_score=float(gate_score),
                    heatmap_ran=heatmap_ran,
                    heatmap_score=heatmap_score,
                    anomaly_score=score,
                    is_anomaly=score >= DECISION_THRESHOLD,
                    anomaly_map=heatmap_map,
                    seconds=seconds[i],
                )
        return predictions


def _chunks(items: list) -> list[list]:
    return [items[start : start + BACKBONE_BATCH] for start in range(0, len(items), BACKBONE_BATCH)]


def _record_share(seconds: list[dict[str, float]], stage: str, started: float) -> None:
    """Split a batch's time for ``stage`` evenly over its images."""
    share = (time.perf_counter() - started) / max(len(seconds), 1)
    for image_seconds in seconds:
        image_seconds[stage] = share
