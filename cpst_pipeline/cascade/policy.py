"""How the cascade turns a gate score (and maybe a heatmap score) into one decision.

Per domain: gate score < ``gate_low`` -> normal, >= ``gate_high`` -> defect, in
between -> run the heatmap model and compare its normalised score with
``heatmap_threshold``. The combined anomaly score is tiered so that a single
threshold, 1.5, reproduces every decision:

    [0, 1)  cleared by the gate        (gate probability)
    (1, 2)  scored by the heatmap      (squashed normalised score - threshold, >= 1.5 is a defect)
    [2, 3]  flagged by the gate        (2 + gate probability)

An image the router places in no known domain gets ``UNKNOWN_DOMAIN_SCORE`` (flagged for review).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

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
    heatmap_threshold: float = math.inf
    val: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def normalise(self, raw_heatmap_score: float) -> float:
        return (raw_heatmap_score - self.score_center) / self.score_scale

    def needs_heatmap(self, gate_score: float) -> bool:
        return self.has_bank and self.gate_low <= gate_score < self.gate_high

    def to_dict(self) -> dict:
        return {k: _finite_or_str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "DomainCalibration":
        return cls(**{k: float(v) if k in _FLOAT_FIELDS else v for k, v in data.items()})


def cascade_score(calibration: DomainCalibration, gate_score: float, normalised_heatmap_score: float | None) -> float:
    if normalised_heatmap_score is not None:
        return _heatmap_tier(normalised_heatmap_score - calibration.heatmap_threshold)
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


_FLOAT_FIELDS = ("gate_low", "gate_high", "score_center", "score_scale", "heatmap_threshold")


def _finite_or_str(value):
    # JSON has no infinity; store it as a string that round-trips.
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value
