"""The quality gates and the promotion rule as pure functions."""

from __future__ import annotations

import math

import pytest

from cpst_pipeline.cascade.policy import DomainCalibration
from cpst_pipeline.pipeline.promotion import PromotionPolicy, SharedComparison, decide_promotion
from cpst_pipeline.pipeline.quality_gates import DomainEvidence, EvaluatedFigures, QualityBounds, assess_domain, failed_domains

BOUNDS = QualityBounds(max_false_positive_rate=0.3, min_auroc=0.6, min_val_defects=3)
INF = math.inf


def calibration(low=0.2, high=0.8, heatmap=1.0, has_bank=True, fpr=0.05, defects=10) -> DomainCalibration:
    return DomainCalibration("d", has_bank, low, high, heatmap_threshold=heatmap, val={"false_positive_rate": fpr, "n_anomaly": defects})


def verdict(cal: DomainCalibration, test: EvaluatedFigures | None = None, bounds: QualityBounds = BOUNDS):
    return assess_domain(DomainEvidence(cal, test), bounds)


def test_a_sound_domain_passes() -> None:
    assert verdict(calibration(), EvaluatedFigures(0.9, 0.1)).status == "pass"
    # the heatmap on every image (band -inf..inf) and a gate-only domain are legitimate
    assert verdict(calibration(low=-INF, high=INF)).status == "pass"
    assert verdict(calibration(low=0.5, high=0.5, heatmap=INF, has_bank=False)).status == "pass"


@pytest.mark.parametrize(
    "cal, reason",
    [
        (calibration(low=-INF, high=-INF), "gate_high is -inf: the gate flags every image"),
        (calibration(low=INF, high=INF), "gate_low is +inf: every image passes as normal"),
        (calibration(heatmap=-INF), "heatmap_threshold is -inf: the heatmap flags every image sent to it"),
        (calibration(heatmap=math.nan), "heatmap_threshold is NaN"),
        (calibration(fpr=1.0), "val false-positive rate 1.000 above the bound 0.300"),
    ],
)
def test_degenerate_calibrations_fail(cal: DomainCalibration, reason: str) -> None:
    result = verdict(cal)
    assert result.status == "fail" and reason in result.reasons


def test_test_figures_fail_above_the_fpr_bound_or_near_chance() -> None:
    result = verdict(calibration(), EvaluatedFigures(auroc=0.55, false_positive_rate=0.4))
    assert result.status == "fail"
    assert result.reasons == ("test false-positive rate 0.400 above the bound 0.300", "test image AUROC 0.550 not clearly above chance (bound 0.600)")
    assert verdict(calibration(), EvaluatedFigures(auroc=None, false_positive_rate=0.0)).status == "warn"


def test_too_few_val_defects_warns_or_fails_with_the_count() -> None:
    warned = verdict(calibration(defects=1))
    assert warned.status == "warn" and warned.reasons == ("only 1 defect image(s) in val to calibrate on (fewer than 3)",)
    failed = verdict(calibration(defects=1), bounds=QualityBounds(min_val_defects=3, few_val_defects="fail"))
    assert failed.status == "fail" and "only 1 defect image(s)" in failed.reasons[0]
    assert failed_domains([warned, failed]) == ["d"]


SHARED_WIN = SharedComparison(challenger_f1=0.8, champion_f1=0.7, test_images=20)
SHARED_LOSS = SharedComparison(challenger_f1=0.6, champion_f1=0.7, test_images=20)


@pytest.mark.parametrize(
    "challenger, champion, comparison, failed, policy, promote, reason",
    [
        ({"a"}, None, None, [], PromotionPolicy(), True, "no champion yet"),
        ({"a", "b"}, {"a"}, SHARED_WIN, [], PromotionPolicy(), True, "new domains judged by the quality gates: b"),
        ({"a", "b"}, {"a"}, SHARED_LOSS, [], PromotionPolicy(), False, "challenger F1 0.6000 < champion F1 0.7000 on 20 test images"),
        ({"a"}, {"a", "b"}, SHARED_WIN, [], PromotionPolicy(), False, "drops domains the champion serves: b"),
        ({"a"}, {"a", "b"}, SHARED_WIN, [], PromotionPolicy(allow_dropped_domains=True), True, "dropped (allowed): b"),
        ({"c"}, {"a"}, None, [], PromotionPolicy(allow_dropped_domains=True), True, "no domain shared with the champion"),
        ({"a"}, {"a"}, None, [], PromotionPolicy(), False, "no test images of the shared domains a"),
        ({"a", "b"}, {"a"}, SHARED_WIN, ["b"], PromotionPolicy(), False, "quality gates failed for b"),
    ],
)
def test_promotion_rule(challenger, champion, comparison, failed, policy, promote, reason) -> None:
    decision = decide_promotion(challenger, champion, comparison, failed, policy)
    assert decision.promote is promote
    assert reason in decision.reason
