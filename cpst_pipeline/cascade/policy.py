"""How the cascade turns a gate score (and maybe a heatmap score) into one decision.

Per domain: gate score < ``gate_low`` -> normal, >= ``gate_high`` -> defect, in
between -> run the heatmap model and compare its normalised score with
``heatmap_threshold``. The combined anomaly score is tiered so that a single
threshold, 1.5, reproduces every decision:

    [0, 1)  cleared by the gate        (gate probability)
    (1, 2)  scored by the heatmap      (1 + sigmoid(normalised score - threshold))
    [2, 3]  flagged by the gate        (2 + gate probability)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

DECISION_THRESHOLD = 1.5


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
        return cls(**{k: _from_str(v) for k, v in data.items()})


def cascade_score(calibration: DomainCalibration, gate_score: float, normalised_heatmap_score: float | None) -> float:
    if normalised_heatmap_score is not None:
        margin = normalised_heatmap_score - calibration.heatmap_threshold
        return 1.0 + 1.0 / (1.0 + math.exp(-max(min(margin, 50.0), -50.0)))
    if gate_score >= calibration.gate_high:
        return 2.0 + gate_score
    return min(gate_score, 0.999999)


def _finite_or_str(value):
    # JSON has no infinity; store it as a string that round-trips.
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _from_str(value):
    return float(value) if value in ("inf", "-inf") else value
