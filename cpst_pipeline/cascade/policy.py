"""How the cascade turns a gate score (and maybe a heatmap score) into one decision.

Per domain: gate score < ``gate_low`` -> normal, >= ``gate_high`` -> defect, in
between -> run the heatmap model and compare its normalised score with
``heatmap_threshold``, or, where calibration found that fusing both scores ranks
better (``fusion``, see fusion.py), compare the fused score with ``fused_threshold``.
The combined anomaly score is tiered so that a single threshold, 1.5, reproduces
every decision:

    [0, 1)  cleared by the gate        (gate probability)
    (1, 2)  scored by the heatmap      (squashed heatmap-stage margin, >= 1.5 is a defect)
    [2, 3]  flagged by the gate        (2 + gate probability)

An image the router places in no known domain gets ``UNKNOWN_DOMAIN_SCORE`` (flagged for review).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from cpst_pipeline.cascade.fusion import FusionModel

DECISION_THRESHOLD = 1.5
UNKNOWN_DOMAIN_SCORE = 3.0


@dataclass
class DomainCalibration:
    domain: str
    has_bank: bool
    gate_low: float
    gate_high: float
    # Heatmap image scores are normalised by statistics fixed per domain (never per batch).
    score_center: float = 0.0
    score_scale: float = 1.0
    # Heatmap alone (also the always-heatmap baseline's threshold).
    heatmap_threshold: float = math.inf
    val: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Where set, images sent to the heatmap are decided on the fused score instead.
    fusion: FusionModel | None = None
    fused_threshold: float = math.inf
    # What the thresholds were fitted on and how they do there (see calibration.py).
    evidence: dict = field(default_factory=dict)

    def normalise(self, raw_heatmap_score: float) -> float:
        return (raw_heatmap_score - self.score_center) / self.score_scale

    def needs_heatmap(self, gate_score: float) -> bool:
        return bool(self.heatmap_calls(gate_score))

    def heatmap_margin(self, gate_score: float | np.ndarray, normalised_heatmap_score: float | np.ndarray) -> float | np.ndarray:
        """Signed distance of the heatmap stage's score from its threshold; >= 0 is a defect.

        Works on scalars and numpy arrays alike.
        """
        if self.fusion is None:
            return normalised_heatmap_score - self.heatmap_threshold
        return self.fusion.score(gate_score, normalised_heatmap_score) - self.fused_threshold

    def heatmap_calls(self, gate_scores: float | np.ndarray) -> np.ndarray:
        """Whether each gate score sends its image to the heatmap."""
        gate_scores = np.asarray(gate_scores, dtype=float)
        return (gate_scores >= self.gate_low) & (gate_scores < self.gate_high) & self.has_bank

    def decisions(self, gate_scores: np.ndarray, normalised_heatmap_scores: np.ndarray | None) -> np.ndarray:
        """The cascade's decision per image, given every image's heatmap score (None without a bank)."""
        gate_scores = np.asarray(gate_scores, dtype=float)
        flagged = gate_scores >= self.gate_high
        if normalised_heatmap_scores is None:
            return flagged
        margin = self.heatmap_margin(gate_scores, np.asarray(normalised_heatmap_scores, dtype=float))
        return np.where(self.heatmap_calls(gate_scores), margin >= 0, flagged)

    def to_dict(self) -> dict:
        data = {k: _finite_or_str(v) for k, v in asdict(self).items() if k != "fusion"}
        data["fusion"] = None if self.fusion is None else self.fusion.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "DomainCalibration":
        """Also reads calibrations written before fusion existed (they have no fusion)."""
        fields = {k: float(v) if k in _FLOAT_FIELDS else v for k, v in data.items()}
        if fields.get("fusion") is not None:
            fields["fusion"] = FusionModel.from_dict(fields["fusion"])
        return cls(**fields)


def cascade_score(calibration: DomainCalibration, gate_score: float, normalised_heatmap_score: float | None) -> float:
    if normalised_heatmap_score is not None:
        return _heatmap_tier(float(calibration.heatmap_margin(gate_score, normalised_heatmap_score)))
    if gate_score >= calibration.gate_high:
        return 2.0 + gate_score
    return min(gate_score, math.nextafter(1.0, 0.0))


def _heatmap_tier(margin: float) -> float:
    """Map a margin to the open interval (1, 2), monotone, with margin >= 0 <=> result >= 1.5.

    The clamps keep rounding from pushing a tiny negative margin onto 1.5 or a huge
    one onto the gate tiers' boundaries.
    """
    squashed = 1.5 + 0.5 * margin / (1.0 + abs(margin))
    if margin >= 0:
        return min(max(squashed, DECISION_THRESHOLD), math.nextafter(2.0, 1.0))
    return max(min(squashed, math.nextafter(DECISION_THRESHOLD, 1.0)), math.nextafter(1.0, 2.0))


_FLOAT_FIELDS = ("gate_low", "gate_high", "score_center", "score_scale", "heatmap_threshold", "fused_threshold")


def _finite_or_str(value):
    # JSON has no infinity; store it as a string that round-trips.
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value
