"""Absolute quality gates a model must pass, domain by domain, before it may be registered.

A domain fails when its calibrated decision is degenerate or its figures are too poor:
a threshold that is NaN or makes the decision constant (every image flagged, or every
image passed), a false-positive rate at the calibrated thresholds above the bound (on
val, and on test once evaluated), or a test image AUROC not clearly above chance.
Too few defects in val to calibrate on warns, or fails when the bounds say so; either
way the verdict names the count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from cpst_pipeline.cascade.policy import DomainCalibration

Status = Literal["pass", "warn", "fail"]


@dataclass(frozen=True)
class QualityBounds:
    # Catches a model that flags (nearly) every normal image; ranking working models is promotion's job.
    max_false_positive_rate: float = 0.9
    # AUROC must exceed this to count as "clearly above chance" (0.5).
    min_auroc: float = 0.6
    min_val_defects: int = 3
    few_val_defects: Literal["warn", "fail"] = "warn"


@dataclass(frozen=True)
class EvaluatedFigures:
    auroc: float | None  # None: the domain's test split holds one class only
    false_positive_rate: float | None  # None: no normal test images


@dataclass(frozen=True)
class DomainEvidence:
    calibration: DomainCalibration
    test: EvaluatedFigures | None = None  # None until the model is evaluated

    @property
    def domain(self) -> str:
        return self.calibration.domain


@dataclass(frozen=True)
class DomainVerdict:
    domain: str
    status: Status
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        return f"{self.domain}: {self.status}" + (f" ({'; '.join(self.reasons)})" if self.reasons else "")


def assess_domain(evidence: DomainEvidence, bounds: QualityBounds) -> DomainVerdict:
    failures = _degenerate_thresholds(evidence.calibration)
    warnings = []
    val = evidence.calibration.val
    val_fpr = val.get("false_positive_rate")
    if val_fpr is None:
        warnings.append("no normal val images: false-positive rate not measured on val")
    elif val_fpr > bounds.max_false_positive_rate:
        failures.append(f"val false-positive rate {val_fpr:.3f} above the bound {bounds.max_false_positive_rate:.3f}")
    defects = int(val.get("n_anomaly", 0))
    if defects < bounds.min_val_defects:
        message = f"only {defects} defect image(s) in val to calibrate on (fewer than {bounds.min_val_defects})"
        (failures if bounds.few_val_defects == "fail" else warnings).append(message)
    if evidence.test is not None:
        test = evidence.test
        if test.false_positive_rate is not None and test.false_positive_rate > bounds.max_false_positive_rate:
            failures.append(f"test false-positive rate {test.false_positive_rate:.3f} above the bound {bounds.max_false_positive_rate:.3f}")
        if test.auroc is None:
            warnings.append("test image AUROC not measurable (test holds one class only, or no images)")
        elif not test.auroc > bounds.min_auroc:
            failures.append(f"test image AUROC {test.auroc:.3f} not clearly above chance (bound {bounds.min_auroc:.3f})")
    status: Status = "fail" if failures else "warn" if warnings else "pass"
    return DomainVerdict(evidence.domain, status, tuple(failures + warnings))


def _degenerate_thresholds(calibration: DomainCalibration) -> list[str]:
    low, high, heatmap = calibration.gate_low, calibration.gate_high, calibration.heatmap_threshold
    named = {"gate_low": low, "gate_high": high, "heatmap_threshold": heatmap}
    nan = [name for name, value in named.items() if math.isnan(value)]
    if nan:
        return [f"{', '.join(nan)} is NaN"]
    if high == -math.inf:
        return ["gate_high is -inf: the gate flags every image"]
    if low == math.inf:
        return ["gate_low is +inf: every image passes as normal"]
    if calibration.has_bank and low < high and not math.isfinite(heatmap):
        outcome = "flags" if heatmap < 0 else "passes"
        return [f"heatmap_threshold is {heatmap}: the heatmap {outcome} every image sent to it"]
    return []


def assess_domains(evidence: list[DomainEvidence], bounds: QualityBounds) -> list[DomainVerdict]:
    return [assess_domain(e, bounds) for e in sorted(evidence, key=lambda e: e.domain)]


def failed_domains(verdicts: list[DomainVerdict]) -> list[str]:
    return [v.domain for v in verdicts if v.status == "fail"]


def evidence_from_calibration(calibrations: dict[str, DomainCalibration]) -> list[DomainEvidence]:
    return [DomainEvidence(c) for c in calibrations.values()]


def evidence_from_evaluation(calibrations: dict[str, DomainCalibration], report: dict) -> list[DomainEvidence]:
    """Each domain's calibration plus the test figures of its section in the evaluation report."""
    sections = report["domains"]
    evidence = []
    for domain, calibration in calibrations.items():
        cascade = (sections.get(domain) or {}).get("cascade") or {}
        evidence.append(DomainEvidence(calibration, EvaluatedFigures(cascade.get("auroc"), cascade.get("false_positive_rate"))))
    return evidence
