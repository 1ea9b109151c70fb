"""Calibration of the gate band and heatmap threshold, and the tiered cascade score."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

import cpst_pipeline.cascade.calibration as calibration_module
from cpst_pipeline.cascade.calibration import (
    CalibrationConfig,
    CalibrationEvidence,
    ScoredImages,
    calibrate_domain,
    calibrate_on_evidence,
    choose_gate_band,
)
from cpst_pipeline.cascade.fusion import FusionDecision, FusionModel
from cpst_pipeline.cascade.policy import DECISION_THRESHOLD, DomainCalibration, cascade_score
from cpst_pipeline.evaluation.metrics import threshold_for_recall


def _outcome(labels, gate_scores, heatmap_flags, low: float, high: float) -> tuple[float, float, int]:
    """(recall, false-positive rate, heatmap calls) of the band rule, recomputed from scratch."""
    labels, gate_scores, heatmap_flags = map(np.asarray, (labels, gate_scores, heatmap_flags))
    flagged = gate_scores >= high
    called = (gate_scores >= low) & (gate_scores < high)
    decision = flagged | (called & heatmap_flags.astype(bool))
    positives, negatives = labels == 1, labels == 0
    recall = decision[positives].mean() if positives.any() else 1.0
    fpr = decision[negatives].mean() if negatives.any() else 0.0
    return float(recall), float(fpr), int(called.sum())


def _brute_force_min_calls(labels, gate_scores, heatmap_flags, target_recall, max_fpr) -> int | None:
    values = np.unique(gate_scores)
    thresholds = [-math.inf, *((values[:-1] + values[1:]) / 2), math.inf]
    best = None
    for i, low in enumerate(thresholds):
        for high in thresholds[i:]:
            recall, fpr, calls = _outcome(labels, gate_scores, heatmap_flags, low, high)
            if recall >= target_recall - 1e-12 and fpr <= max_fpr + 1e-12:
                best = calls if best is None else min(best, calls)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_chosen_band_meets_constraints_and_is_cheapest(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 40
    labels = (rng.random(n) < 0.4).astype(int)
    labels[:2] = [0, 1]
    gate = np.round(np.clip(0.3 + 0.35 * labels + rng.normal(scale=0.2, size=n), 0, 1), 2)  # rounding makes ties
    flags = np.where(rng.random(n) < 0.85, labels, 1 - labels).astype(bool)
    heatmap_recall, heatmap_fpr = flags[labels == 1].mean(), flags[labels == 0].mean()
    target, max_fpr = min(0.9, heatmap_recall), heatmap_fpr + 0.05

    low, high = choose_gate_band(labels, gate, flags, target, max_fpr)
    assert low <= high
    recall, fpr, calls = _outcome(labels, gate, flags, low, high)
    assert recall >= target - 1e-12
    assert fpr <= max_fpr + 1e-12
    assert calls == _brute_force_min_calls(labels, gate, flags, target, max_fpr)
    assert calls < n  # an informative gate saves heatmap calls


def _all_bands(labels, gate_scores, heatmap_flags):
    """(low, high, (recall, fpr, calls)) for every band between distinct gate scores."""
    values = np.unique(gate_scores)
    thresholds = [-math.inf, *((values[:-1] + values[1:]) / 2), math.inf]
    return [(lo, hi, _outcome(labels, gate_scores, heatmap_flags, lo, hi)) for i, lo in enumerate(thresholds) for hi in thresholds[i:]]


@pytest.mark.parametrize("seed", range(6))
def test_the_fpr_bound_wins_over_the_call_budget(seed: int) -> None:
    """A weak gate and a perfect heatmap: meeting the FPR bound needs most images in the band,
    more than the budget allows. The budget gives way: fewest calls that meet the bound."""
    rng = np.random.default_rng(seed)
    n, budget = 60, 0.3
    labels = (rng.random(n) < 0.3).astype(int)
    labels[:2] = [0, 1]
    gate = np.round(np.clip(0.4 + 0.2 * labels + rng.normal(scale=0.2, size=n), 0, 1), 2)
    flags = labels.astype(bool)
    low, high = choose_gate_band(labels, gate, flags, 0.95, 0.0, budget)
    recall, fpr, calls = _outcome(labels, gate, flags, low, high)
    assert recall >= 0.95 and fpr == 0.0
    assert calls > budget * n
    assert calls == _brute_force_min_calls(labels, gate, flags, 0.95, 0.0)


@pytest.mark.parametrize("seed", range(6))
def test_a_weak_gate_routes_as_many_images_as_the_budget_allows(seed: int) -> None:
    """With FPR slack the cheapest band sits on the bound; a weak gate's band instead sends the
    heatmap as many images as the budget pays for, then has the fewest false positives."""
    rng = np.random.default_rng(seed)
    n, budget, max_fpr = 80, 0.5, 0.3
    labels = (rng.random(n) < 0.3).astype(int)
    labels[:2] = [0, 1]
    gate = np.round(np.clip(0.4 + 0.25 * labels + rng.normal(scale=0.2, size=n), 0, 1), 2)
    flags = np.where(rng.random(n) < 0.9, labels, 1 - labels).astype(bool)
    target = min(0.9, flags[labels == 1].mean())
    cheapest = _outcome(labels, gate, flags, *choose_gate_band(labels, gate, flags, target, max_fpr, budget))
    weak = _outcome(labels, gate, flags, *choose_gate_band(labels, gate, flags, target, max_fpr, budget, gate_is_weaker=True))
    eligible = [o for _, _, o in _all_bands(labels, gate, flags) if o[0] >= target - 1e-12 and o[1] <= max_fpr + 1e-12 and o[2] <= budget * n]
    assert weak[0] >= target - 1e-12 and weak[1] <= max_fpr + 1e-12
    assert weak[2] == max(o[2] for o in eligible) <= budget * n
    assert weak[1] == pytest.approx(min(o[1] for o in eligible if o[2] == weak[2]))
    assert cheapest[2] == min(o[2] for o in eligible) < weak[2]


def test_a_weak_gate_that_cannot_meet_the_fpr_bound_within_budget_leaves_every_image_to_the_heatmap() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(60) < 0.3).astype(int)
    gate = np.round(np.clip(0.4 + 0.2 * labels + rng.normal(scale=0.2, size=60), 0, 1), 2)
    flags = labels.astype(bool)  # a perfect heatmap
    assert choose_gate_band(labels, gate, flags, 0.95, 0.0, 0.3, gate_is_weaker=True) == (-math.inf, math.inf)
    strong_rule = _outcome(labels, gate, flags, *choose_gate_band(labels, gate, flags, 0.95, 0.0, 0.3))
    assert strong_rule[1] == 0.0 and 0.3 * 60 < strong_rule[2] < 60  # the cheapest band over budget, for comparison


def test_when_the_heatmap_misses_the_recall_the_gate_flags_with_fewest_false_positives() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 30 + [1] * 10)
    gate = np.round(np.clip(0.3 + 0.4 * labels + rng.normal(scale=0.15, size=40), 0, 1), 3)
    flags = labels.astype(bool)
    flags[30:33] = False  # the heatmap misses 3 of 10 defects (recall 0.7 < 0.9), and so does the gate:
    gate[30:33] = [0.3, 0.35, 0.4]  # flagging two of them by gate score flags normals as well
    low, high = choose_gate_band(labels, gate, flags, 0.9, 0.0, 0.5)
    recall, fpr, calls = _outcome(labels, gate, flags, low, high)
    keepers = [o for _, _, o in _all_bands(labels, gate, flags) if o[0] >= 0.9 and o[2] <= 20]
    assert recall >= 0.9 and calls <= 20
    assert fpr == pytest.approx(min(o[1] for o in keepers)) and fpr > 0.0


def test_perfect_gate_gives_an_empty_band_between_the_classes() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 20 + [1] * 10)
    gate = np.where(labels == 1, rng.uniform(0.7, 1.0, 30), rng.uniform(0.0, 0.3, 30))
    flags = labels.astype(bool)
    low, high = choose_gate_band(labels, gate, flags, 0.95, 0.02)
    assert low == high
    assert gate[labels == 0].max() < high <= gate[labels == 1].min()
    assert _outcome(labels, gate, flags, low, high) == (1.0, 0.0, 0)


def test_constant_gate_is_useless() -> None:
    labels = np.array([0, 1] * 10)
    flags = labels.astype(bool)
    assert choose_gate_band(labels, np.full(20, 0.5), flags, 0.95, 0.02) == (-math.inf, math.inf)


def test_random_gate_is_useless_when_it_cannot_clear_or_flag_safely() -> None:
    """Random gate scores; the lowest-scored image is a defect and the highest a normal, so any
    narrower band loses recall (target 1.0) or adds a false positive (no FPR slack)."""
    rng = np.random.default_rng(3)
    labels = (rng.random(50) < 0.3).astype(int)
    gate = rng.random(50)
    order = np.argsort(gate)
    labels[order[0]], labels[order[-1]] = 1, 0
    flags = labels.astype(bool)  # the heatmap alone is perfect
    assert choose_gate_band(labels, gate, flags, 1.0, 0.0) == (-math.inf, math.inf)


def test_all_high_gate_never_flags_everything_when_normals_would_pay_for_it() -> None:
    rng = np.random.default_rng(1)
    labels = np.array([0] * 30 + [1] * 10)
    gate = rng.uniform(0.9, 1.0, 40)  # the gate calls everything a defect
    flags = labels.astype(bool)
    low, high = choose_gate_band(labels, gate, flags, 0.95, 0.02)
    assert high > -math.inf
    recall, fpr, _ = _outcome(labels, gate, flags, low, high)
    assert recall >= 0.95 and fpr <= 0.02
    # and with every score tied, nothing can be flagged by the gate alone
    assert choose_gate_band(labels, np.full(40, 0.99), flags, 0.95, 0.02) == (-math.inf, math.inf)


# ---------------------------------------------------------------- calibrate_domain


def _val(seed: int = 0, n: int = 40):
    rng = np.random.default_rng(seed)
    labels = np.array([0] * (n - n // 4) + [1] * (n // 4))
    gate = np.clip(0.25 + 0.5 * labels + rng.normal(scale=0.15, size=n), 0, 1)
    raw = 2.0 + labels * 1.5 + rng.normal(scale=0.5, size=n)
    return labels, gate, raw


def test_calibrate_domain_with_heatmap_meets_its_targets() -> None:
    labels, gate, raw = _val()
    config = CalibrationConfig(target_recall=0.9, max_extra_fpr=0.05)
    cal = calibrate_domain("metal", labels, gate, raw, config)
    assert cal.has_bank and cal.gate_low <= cal.gate_high
    # normalisation from the val normals only
    assert cal.score_center == pytest.approx(np.median(raw[labels == 0]))
    assert cal.score_scale == pytest.approx(np.std(raw[labels == 0]))
    normalised = (raw - cal.score_center) / cal.score_scale
    assert cal.heatmap_threshold == pytest.approx(threshold_for_recall(labels, normalised, 0.9))
    flags = normalised >= cal.heatmap_threshold
    recall, fpr, calls = _outcome(labels, gate, flags, cal.gate_low, cal.gate_high)
    assert recall >= 0.9
    assert fpr <= flags[labels == 0].mean() + 0.05 + 1e-12
    assert cal.val["recall"] == pytest.approx(recall)
    assert cal.val["false_positive_rate"] == pytest.approx(fpr)
    assert cal.val["heatmap_call_rate"] == pytest.approx(calls / len(labels))
    assert (cal.val["n"], cal.val["n_anomaly"], cal.val["n_normal"]) == (40, 10, 30)


def test_calibrate_domain_without_bank_uses_the_gate_alone() -> None:
    labels, gate, _ = _val(1)
    cal = calibrate_domain("tile", labels, gate, None, CalibrationConfig(target_recall=0.9))
    assert not cal.has_bank
    assert cal.gate_low == cal.gate_high == pytest.approx(threshold_for_recall(labels, gate, 0.9))
    assert any("no memory bank" in note for note in cal.notes)
    assert not any(cal.needs_heatmap(g) for g in gate)
    assert cal.val["heatmap_call_rate"] == 0.0
    assert cal.val["recall"] >= 0.9
    assert cal.val["recall"] == pytest.approx((gate[labels == 1] >= cal.gate_high).mean())


def test_calibrate_domain_without_bank_or_anomalies_passes_everything() -> None:
    cal = calibrate_domain("tile", np.zeros(5, int), np.linspace(0, 1, 5), None, CalibrationConfig())
    assert cal.gate_low == cal.gate_high == math.inf
    assert any("no anomalies" in note for note in cal.notes)
    assert cal.val["false_positive_rate"] == 0.0


def test_calibrate_domain_without_val_anomalies_runs_heatmap_on_everything() -> None:
    rng = np.random.default_rng(2)
    raw = rng.normal(5.0, 1.0, 30)
    cal = calibrate_domain("metal", np.zeros(30, int), rng.random(30), raw, CalibrationConfig())
    assert (cal.gate_low, cal.gate_high) == (-math.inf, math.inf)
    assert any("no anomalies with gate scores" in note for note in cal.notes)
    normalised = (raw - np.median(raw)) / np.std(raw)
    assert cal.heatmap_threshold == pytest.approx(np.quantile(normalised, 0.99))
    assert cal.val["heatmap_call_rate"] == 1.0 and cal.val["recall"] is None


def test_calibrate_domain_without_val_normals_does_not_flag_everything() -> None:
    rng = np.random.default_rng(0)
    cal = calibrate_domain("metal", np.ones(10, int), rng.random(10), rng.random(10) + 1.0, CalibrationConfig())
    assert cal.gate_high > -math.inf


# ---------------------------------------------------------------- DomainCalibration / cascade_score


def test_domain_calibration_json_round_trip_with_infinities() -> None:
    cal = DomainCalibration(
        "metal", True, -math.inf, math.inf, score_center=1.25, score_scale=0.5, heatmap_threshold=math.inf,
        val={"recall": 0.97, "n": 12}, notes=["a note"],
    )
    text = json.dumps(cal.to_dict(), allow_nan=False)  # strict JSON: no Infinity literals
    restored = DomainCalibration.from_dict(json.loads(text))
    assert restored == cal
    assert restored.gate_low == -math.inf and restored.gate_high == math.inf
    finite = DomainCalibration("tile", False, 0.4, 0.4, notes=["x"])
    assert DomainCalibration.from_dict(json.loads(json.dumps(finite.to_dict(), allow_nan=False))) == finite


def test_domain_named_inf_round_trips() -> None:
    cal = DomainCalibration("inf", False, 0.5, 0.5)
    assert DomainCalibration.from_dict(json.loads(json.dumps(cal.to_dict()))).domain == "inf"


def _expected_decision(cal: DomainCalibration, gate: float, heatmap: float | None) -> bool:
    if cal.needs_heatmap(gate):
        if cal.fusion is not None:
            fused = cal.fusion.intercept + cal.fusion.gate_weight * math.log(gate / (1 - gate)) + cal.fusion.heatmap_weight * heatmap
            return fused >= cal.fused_threshold
        return heatmap >= cal.heatmap_threshold
    return gate >= cal.gate_high


@pytest.mark.parametrize(
    "cal",
    [
        DomainCalibration("banded", True, 0.3, 0.7, heatmap_threshold=0.8),
        DomainCalibration("all-heatmap", True, -math.inf, math.inf, heatmap_threshold=-0.5),
        DomainCalibration("gate-only", False, 0.55, 0.55),
        DomainCalibration("empty-band", True, 0.4, 0.4, heatmap_threshold=1.0),
        DomainCalibration("never-flags", False, math.inf, math.inf),  # even gate score 1.0 stays in [0, 1)
        DomainCalibration("fused", True, 0.3, 0.7, heatmap_threshold=0.8, fusion=FusionModel(-1.0, 0.7, 1.3), fused_threshold=0.25),
    ],
    ids=lambda c: c.domain,
)
def test_cascade_score_threshold_reproduces_every_decision(cal: DomainCalibration) -> None:
    for gate in np.linspace(0.0, 1.0, 41):
        for heatmap in np.linspace(-3.0, 4.0, 29):
            called = cal.needs_heatmap(gate)
            score = cascade_score(cal, gate, heatmap if called else None)
            assert (score >= DECISION_THRESHOLD) == _expected_decision(cal, gate, heatmap), (gate, heatmap)
            if called:
                assert 1.0 < score < 2.0
            elif gate >= cal.gate_high:
                assert 2.0 <= score <= 3.0 and score == pytest.approx(2.0 + gate)
            else:
                assert 0.0 <= score < 1.0 and score == min(gate, math.nextafter(1.0, 0.0))


def test_cascade_score_ranks_heatmap_scores_monotonically() -> None:
    cal = DomainCalibration("m", True, 0.2, 0.8, heatmap_threshold=1.0)
    scores = [cascade_score(cal, 0.5, h) for h in np.linspace(-5, 7, 50)]
    assert all(a < b for a, b in zip(scores, scores[1:]))
    assert cascade_score(cal, 0.5, 1.0) == pytest.approx(1.5)


def test_cascade_score_just_below_threshold_is_normal() -> None:
    cal = DomainCalibration("m", True, 0.2, 0.8, heatmap_threshold=1.0)
    below = math.nextafter(1.0, 0.0)
    assert not below >= cal.heatmap_threshold
    assert cascade_score(cal, 0.5, below) < DECISION_THRESHOLD


def test_cascade_heatmap_tier_stays_inside_open_interval() -> None:
    cal = DomainCalibration("m", True, 0.2, 0.8, heatmap_threshold=0.0)
    assert 1.0 < cascade_score(cal, 0.5, -40.0) < cascade_score(cal, 0.5, 40.0) < 2.0


def test_score_normalisation_uses_fixed_statistics() -> None:
    labels, gate, raw = _val(4)
    cal = calibrate_domain("metal", labels, gate, raw, CalibrationConfig())
    raw_score = 3.3
    alone = cal.normalise(raw_score)
    with_low = cal.normalise(np.array([raw_score, -100.0]))[0]
    with_high = cal.normalise(np.array([1000.0, raw_score, 5.0]))[1]
    assert alone == with_low == with_high
    assert alone == pytest.approx((raw_score - np.median(raw[labels == 0])) / np.std(raw[labels == 0]))
    # a different val set gives different statistics, so the check above is not vacuous
    other = calibrate_domain("metal", labels, gate, raw * 2.0, CalibrationConfig())
    assert other.normalise(raw_score) != alone


def test_fused_calibration_round_trips_and_old_records_load_without_fusion() -> None:
    cal = DomainCalibration(
        "metal", True, 0.2, 0.8, 1.0, 0.5, heatmap_threshold=1.2, fusion=FusionModel(-0.5, 0.8, 1.7), fused_threshold=0.3,
        evidence={"band_fitted_on": {"val_mix": 10, "train_mix": 30}},
    )
    text = json.dumps(cal.to_dict(), allow_nan=False)
    assert json.loads(text)["fusion"] == {"intercept": -0.5, "gate_weight": 0.8, "heatmap_weight": 1.7}
    assert DomainCalibration.from_dict(json.loads(text)) == cal
    old = {k: v for k, v in cal.to_dict().items() if k not in ("fusion", "fused_threshold", "evidence")}
    restored = DomainCalibration.from_dict(old)
    assert restored.fusion is None and restored.evidence == {}
    assert cascade_score(restored, 0.5, 1.2) == pytest.approx(1.5)  # heatmap alone decides again


def test_vectorised_decisions_match_cascade_score() -> None:
    cal = DomainCalibration("m", True, 0.3, 0.7, heatmap_threshold=0.8, fusion=FusionModel(-1.0, 0.7, 1.3), fused_threshold=0.25)
    rng = np.random.default_rng(0)
    gate, heatmap = rng.random(500), rng.normal(0.5, 1.5, 500)
    expected = [cascade_score(cal, g, h if cal.needs_heatmap(g) else None) >= DECISION_THRESHOLD for g, h in zip(gate, heatmap)]
    assert cal.decisions(gate, heatmap).tolist() == expected
    assert cal.heatmap_calls(gate).tolist() == [cal.needs_heatmap(g) for g in gate]


# ---------------------------------------------------------------- calibrate_on_evidence


def _domain(seed: int, n: int, gate_signal: float, heatmap_signal: float, prefix: str) -> ScoredImages:
    """Gate and heatmap see each defect through independent noise; two images per group."""
    rng = np.random.default_rng(seed)
    labels = np.repeat((rng.random(n // 2) < 0.3).astype(int), 2)
    gate = 1 / (1 + np.exp(-(gate_signal * labels - 1.0 + rng.normal(size=n))))
    raw = 3.0 + heatmap_signal * labels + rng.normal(size=n)
    return ScoredImages(labels, gate, raw, np.repeat([f"{prefix}{i}" for i in range(n // 2)], 2))


def _cascade_outcome(cal: DomainCalibration, images: ScoredImages) -> tuple[float, float, float]:
    normalised = cal.normalise(np.asarray(images.raw_heatmap_scores))
    decisions = cal.decisions(images.gate_scores, normalised)
    labels = np.asarray(images.labels)
    return decisions[labels == 1].mean(), decisions[labels == 0].mean(), cal.heatmap_calls(images.gate_scores).mean()


def test_band_is_fitted_on_val_and_out_of_fold_train_mix() -> None:
    val, train_mix = _domain(0, 30, 3.0, 3.0, "v"), _domain(1, 120, 3.0, 3.0, "t")
    config = CalibrationConfig(target_recall=0.9, fuse_scores=False)
    cal = calibrate_on_evidence("metal", CalibrationEvidence(val, train_mix), config)
    assert cal.evidence["band_fitted_on"] == {"val_mix": 30, "train_mix": 120}
    assert cal.evidence["heatmap_threshold_fitted_on"] == {"val_mix": 30, "train_mix": 120}
    assert cal.evidence["train_mix_gate_scores"] == "out-of-fold"
    assert (cal.val["n"], cal.evidence["n"]) == (30, 150)
    both = ScoredImages(*(np.concatenate([a, b]) for a, b in zip((val.labels, val.gate_scores, val.raw_heatmap_scores), (train_mix.labels, train_mix.gate_scores, train_mix.raw_heatmap_scores))))
    recall, fpr, calls = _cascade_outcome(cal, both)
    assert cal.evidence["recall"] == pytest.approx(recall) and recall >= 0.9
    assert cal.evidence["false_positive_rate"] == pytest.approx(fpr)
    heatmap_fpr = (cal.normalise(both.raw_heatmap_scores)[both.labels == 0] >= cal.heatmap_threshold).mean()
    assert fpr <= heatmap_fpr + config.max_extra_fpr + 1e-12
    assert cal.val["recall"] == pytest.approx(_cascade_outcome(cal, val)[0])
    low, high = cal.val["recall_ci"]  # Wilson interval around the val recall
    assert low <= cal.val["recall"] <= high and high - low > 0.05
    # the same images with train_mix's gate scores withheld: the band is fitted on val alone
    withheld = ScoredImages(train_mix.labels, None, train_mix.raw_heatmap_scores, train_mix.groups)
    val_only = calibrate_on_evidence("metal", CalibrationEvidence(val, withheld), config)
    assert val_only.evidence["band_fitted_on"] == {"val_mix": 30, "train_mix": 0}
    assert val_only.evidence["train_mix_gate_scores"] == "none"
    assert val_only.heatmap_threshold == cal.heatmap_threshold  # the heatmap threshold uses train_mix either way


def test_weak_gate_routes_more_images_to_the_heatmap_within_the_budget() -> None:
    val, train_mix = _domain(2, 40, 1.5, 4.0, "v"), _domain(3, 160, 1.5, 4.0, "t")
    config = CalibrationConfig(target_recall=0.9, max_extra_fpr=0.1, max_call_rate=0.6, fuse_scores=False)
    cal = calibrate_on_evidence("metal", CalibrationEvidence(val, train_mix), config)
    assert cal.evidence["gate_auroc"] < cal.evidence["heatmap_stage_auroc"]
    labels, gate = np.concatenate([val.labels, train_mix.labels]), np.concatenate([val.gate_scores, train_mix.gate_scores])
    normalised = cal.normalise(np.concatenate([val.raw_heatmap_scores, train_mix.raw_heatmap_scores]))
    flags = normalised >= cal.heatmap_threshold
    max_fpr = flags[labels == 0].mean() + config.max_extra_fpr
    served = np.arange(len(labels)) < len(val.labels)
    cheapest = _outcome(labels, gate, flags, *choose_gate_band(labels, gate, flags, 0.9, max_fpr, config.max_call_rate, served_gate_rows=served))
    routed = _outcome(labels, gate, flags, cal.gate_low, cal.gate_high)
    assert routed[2] > cheapest[2] and routed[1] < cheapest[1]  # more calls bought fewer false positives
    assert routed[2] <= config.max_call_rate * len(labels)
    assert any("ranks worse than the heatmap stage" in note for note in cal.notes)
    unrouted = calibrate_on_evidence("metal", CalibrationEvidence(val, train_mix), replace(config, weak_gate_routing=False))
    assert _outcome(labels, gate, flags, unrouted.gate_low, unrouted.gate_high) == cheapest
    assert cal.evidence["heatmap_call_rate"] == pytest.approx(routed[2] / len(labels))


def test_fusion_decides_heatmap_images_when_it_ranks_better() -> None:
    val, train_mix = _domain(4, 60, 2.0, 2.0, "v"), _domain(5, 240, 2.0, 2.0, "t")
    config = CalibrationConfig(target_recall=0.9, max_call_rate=1.0)
    cal = calibrate_on_evidence("metal", CalibrationEvidence(val, train_mix), config)
    fusion = cal.evidence["fusion"]
    assert cal.fusion is not None and fusion["use"]
    assert fusion["fused_cv_auroc"] >= max(fusion["gate_auroc"], fusion["heatmap_auroc"]) + config.fusion.min_auroc_gain
    labels = np.concatenate([val.labels, train_mix.labels])
    gate = np.concatenate([val.gate_scores, train_mix.gate_scores])
    normalised = cal.normalise(np.concatenate([val.raw_heatmap_scores, train_mix.raw_heatmap_scores]))
    fused = cal.fusion.score(gate, normalised)
    assert (fused[labels == 1] >= cal.fused_threshold).mean() >= 0.9
    decisions = cal.decisions(gate, normalised)
    scores = [cascade_score(cal, g, h if cal.needs_heatmap(g) else None) for g, h in zip(gate, normalised)]
    assert ((np.array(scores) >= DECISION_THRESHOLD) == decisions).all()
    assert decisions[labels == 1].mean() >= 0.9
    restored = DomainCalibration.from_dict(json.loads(json.dumps(cal.to_dict(), allow_nan=False)))
    assert restored == cal


def test_gate_only_domain_calibrates_on_out_of_fold_scores_too() -> None:
    val, train_mix = _domain(6, 30, 3.0, 0.0, "v"), _domain(7, 90, 3.0, 0.0, "t")
    strip = lambda s: ScoredImages(s.labels, s.gate_scores, None, s.groups)  # noqa: E731
    cal = calibrate_on_evidence("tile", CalibrationEvidence(strip(val), strip(train_mix)), CalibrationConfig(target_recall=0.9))
    labels, gate = np.concatenate([val.labels, train_mix.labels]), np.concatenate([val.gate_scores, train_mix.gate_scores])
    assert not cal.has_bank and cal.gate_low == cal.gate_high == pytest.approx(threshold_for_recall(labels, gate, 0.9))
    assert cal.evidence["band_fitted_on"] == {"val_mix": 30, "train_mix": 90} and cal.evidence["heatmap_threshold_fitted_on"] is None


def test_malformed_evidence_is_rejected() -> None:
    with pytest.raises(ValueError, match="0/1"):
        ScoredImages(np.array([0, 2]), np.array([0.1, 0.2]), None)
    with pytest.raises(ValueError, match="gate_scores has shape"):
        ScoredImages(np.array([0, 1]), np.array([0.1]), None)
    with pytest.raises(ValueError, match="finite"):
        ScoredImages(np.array([0, 1]), np.array([0.1, np.nan]), None)
    with pytest.raises(ValueError, match="val images need gate scores"):
        CalibrationEvidence(ScoredImages(np.array([0, 1]), None, np.array([1.0, 2.0])))
    with pytest.raises(ValueError, match="both have heatmap scores"):
        CalibrationEvidence(ScoredImages(np.array([0, 1]), np.array([0.1, 0.9]), None), ScoredImages(np.array([0, 1]), None, np.array([1.0, 2.0])))


def test_a_useless_gate_leaves_every_image_to_the_heatmap_and_says_so() -> None:
    val, train_mix = _domain(8, 40, 0.0, 4.0, "v"), _domain(9, 160, 0.0, 4.0, "t")
    config = CalibrationConfig(target_recall=0.9, max_call_rate=0.3, fuse_scores=False)
    cal = calibrate_on_evidence("metal", CalibrationEvidence(val, train_mix), config)
    assert (cal.gate_low, cal.gate_high) == (-math.inf, math.inf) and cal.evidence["heatmap_call_rate"] == 1.0
    assert any("no band within the call budget (30%)" in note for note in cal.notes)
    labels = np.concatenate([val.labels, train_mix.labels])
    normalised = cal.normalise(np.concatenate([val.raw_heatmap_scores, train_mix.raw_heatmap_scores]))
    heatmap_fpr = (normalised[labels == 0] >= cal.heatmap_threshold).mean()
    assert cal.evidence["false_positive_rate"] <= heatmap_fpr + config.max_extra_fpr + 1e-12


def test_a_fusion_that_ranks_better_but_breaks_the_fpr_bound_at_the_recall_is_not_used(monkeypatch) -> None:
    """Cross-validated AUROC judges the whole ranking; the cascade decides at one threshold. A fused
    score that must flag more normal images than the heatmap alone to keep the recall is dropped."""
    val, train_mix = _domain(4, 60, 2.0, 2.0, "v"), _domain(5, 240, 2.0, 2.0, "t")
    config = CalibrationConfig(target_recall=0.9, max_call_rate=1.0)
    inverted = FusionModel(intercept=0.0, gate_weight=0.0, heatmap_weight=-1.0)  # ranks defects last
    decision = FusionDecision(True, "forced for the test", 0.7, 0.8, 0.9, inverted)
    monkeypatch.setattr(calibration_module, "decide_fusion", lambda *args: decision)
    cal = calibrate_on_evidence("metal", CalibrationEvidence(val, train_mix), config)
    assert cal.fusion is None and not cal.evidence["fusion"]["use"]
    assert "not used: at recall 0.9" in cal.evidence["fusion"]["reason"]
    # the heatmap alone decides, within its own FPR: no band that flags every image
    assert cal.gate_high > -math.inf
    normal = np.concatenate([val.labels, train_mix.labels]) == 0
    heatmap = cal.normalise(np.concatenate([val.raw_heatmap_scores, train_mix.raw_heatmap_scores]))
    assert cal.evidence["false_positive_rate"] <= (heatmap[normal] >= cal.heatmap_threshold).mean() + config.max_extra_fpr + 1e-9


def test_the_band_keeps_the_recall_on_the_images_the_served_gate_scored_where_it_can() -> None:
    """Pooled, the cheapest band clears 4 val defects that the out-of-fold train_mix defects make
    up for; with the served gate's rows named, the band flags them at a small FPR cost."""
    val_labels, train_labels = np.array([0] * 20 + [1] * 20), np.array([0] * 80 + [1] * 80)
    val_gate = np.concatenate([np.linspace(0.0, 0.5, 20), np.linspace(0.42, 0.45, 4), np.linspace(0.6, 1.0, 16)])
    train_gate = np.concatenate([np.linspace(0.0, 0.3, 80), np.linspace(0.6, 1.0, 80)])
    labels, gate = np.concatenate([val_labels, train_labels]), np.concatenate([val_gate, train_gate])
    served = np.arange(len(labels)) < 40
    flags = labels.astype(bool)
    flags[20:24] = False  # the heatmap misses the same 4 val defects
    pooled = choose_gate_band(labels, gate, flags, 0.95, 0.05)
    both = choose_gate_band(labels, gate, flags, 0.95, 0.05, served_gate_rows=served)
    assert _outcome(labels[served], gate[served], flags[served], *pooled)[0] == 0.8  # 100 defects pooled: 5 misses allowed
    recall, fpr, _ = _outcome(labels, gate, flags, *both)
    assert _outcome(labels[served], gate[served], flags[served], *both)[0] >= 0.95
    assert 0.0 < fpr <= 0.05 and recall >= 0.95
    # a bound the val-keeping band would break: the pooled band instead
    assert choose_gate_band(labels, gate, flags, 0.95, 0.0, served_gate_rows=served) == pooled
