"""Choose per-domain thresholds on validation data.

1. Heatmap scores are normalised with the median and spread of the domain's normal
   images that the memory bank never saw (val, plus the gate's training images).
2. The heatmap threshold is the largest one that keeps the target recall on those images.
3. The gate band [gate_low, gate_high) is the narrowest (fewest heatmap calls) that
   keeps the target recall, sends at most ``max_call_rate`` of the images to the
   heatmap and adds at most ``max_extra_fpr`` false-positive rate over running the
   heatmap on every image. Without the FPR bound the cheapest "cascade" would flag
   everything. When the gate is too weak to meet both bounds, quality wins: the
   fewest calls that meet the FPR bound, over the budget (the calibration notes it).
   On the demo's weakest domain the budget-first rule flagged 93 % of normal val
   images where the heatmap alone flagged 57 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cpst_pipeline.cascade.policy import DomainCalibration
from cpst_pipeline.evaluation.intervals import trials_needed, wilson_interval
from cpst_pipeline.evaluation.metrics import threshold_for_recall


@dataclass(frozen=True)
class CalibrationConfig:
    target_recall: float = 0.95
    max_extra_fpr: float = 0.02
    # Share of images the heatmap may see: the cascade's cost budget.
    max_call_rate: float = 0.35


def score_normaliser(raw_scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, list[str]]:
    normal = raw_scores[labels == 0]
    notes = []
    if len(normal) < 2:
        notes.append("fewer than 2 normal val images: heatmap scores normalised with all val images")
        normal = raw_scores
    center = float(np.median(normal))
    scale = float(np.std(normal)) or 1.0
    return center, scale, notes


def _boundaries(sorted_scores: np.ndarray) -> np.ndarray:
    """Split positions between distinct scores (ties are never separated)."""
    n = len(sorted_scores)
    inner = np.flatnonzero(np.diff(sorted_scores) > 0) + 1
    return np.concatenate([[0], inner, [n]])


def _threshold_at(sorted_scores: np.ndarray, position: int) -> float:
    if position == 0:
        return -math.inf
    if position == len(sorted_scores):
        return math.inf
    return float((sorted_scores[position - 1] + sorted_scores[position]) / 2)


def choose_gate_band(
    labels: np.ndarray, gate_scores: np.ndarray, heatmap_flags: np.ndarray, target_recall: float, max_fpr: float, max_call_rate: float = 1.0
) -> tuple[float, float]:
    """(gate_low, gate_high) under the recall bound, the call budget and the FPR bound (see module doc).

    Falls back to (-inf, inf), the heatmap on every image, when no band keeps the recall
    or when there are no normal images to measure false positives on.
    """
    if not (labels == 0).any():
        return -math.inf, math.inf
    order = np.argsort(gate_scores, kind="stable")
    g, y, h = gate_scores[order], labels[order].astype(int), heatmap_flags[order].astype(int)
    n_pos, n_neg = y.sum(), (1 - y).sum()
    cum = lambda values: np.concatenate([[0], np.cumsum(values)])  # noqa: E731
    pos, neg, pos_h, neg_h = cum(y), cum(1 - y), cum(y * h), cum((1 - y) * h)
    cuts = _boundaries(g)
    low, high = np.meshgrid(cuts, cuts, indexing="ij")
    true_pos = (pos[-1] - pos[high]) + (pos_h[high] - pos_h[low])
    false_pos = (neg[-1] - neg[high]) + (neg_h[high] - neg_h[low])
    calls = high - low
    keeps_recall = (low <= high) & (true_pos / max(n_pos, 1) >= target_recall - 1e-12)
    in_budget = keeps_recall & (calls <= max_call_rate * len(g) + 1e-9)
    meets_fpr = keeps_recall & (false_pos / max(n_neg, 1) <= max_fpr + 1e-12)
    if (in_budget & meets_fpr).any():
        choice, keys = in_budget & meets_fpr, (false_pos, calls)  # fewest calls, then fewest false positives
    elif meets_fpr.any():
        choice, keys = meets_fpr, (false_pos, calls)  # over the budget: fewest calls that keep the FPR bound
    else:
        return -math.inf, math.inf
    best = np.lexsort(tuple(np.where(choice, k, np.iinfo(np.int64).max).ravel() for k in keys))[0]
    i, j = np.unravel_index(best, calls.shape)
    return _threshold_at(g, int(low[i, j])), _threshold_at(g, int(high[i, j]))


def calibrate_domain(
    domain: str,
    labels: np.ndarray,
    gate_scores: np.ndarray,
    raw_heatmap_scores: np.ndarray | None,
    config: CalibrationConfig,
    extra_heatmap_evidence: tuple[np.ndarray, np.ndarray] | None = None,
) -> DomainCalibration:
    """Thresholds for one domain from its val images (labels 1 = anomaly).

    ``extra_heatmap_evidence`` = (labels, raw heatmap scores) of further images the memory
    bank never saw (the gate's training images): they sharpen the heatmap normalisation and
    threshold, which val alone estimates from a handful of defects. The gate band is chosen
    on val only, because the gate has seen its own training images.
    """
    labels = np.asarray(labels, dtype=int)
    gate_scores = np.asarray(gate_scores, dtype=float)
    if raw_heatmap_scores is None:
        return _calibrate_gate_only(domain, labels, gate_scores, config)
    raw = np.asarray(raw_heatmap_scores, dtype=float)
    evidence_labels, evidence_raw = labels, raw
    if extra_heatmap_evidence is not None:
        evidence_labels = np.concatenate([labels, np.asarray(extra_heatmap_evidence[0], dtype=int)])
        evidence_raw = np.concatenate([raw, np.asarray(extra_heatmap_evidence[1], dtype=float)])
    center, scale, notes = score_normaliser(evidence_raw, evidence_labels)
    calibration = DomainCalibration(domain, True, -math.inf, math.inf, center, scale, notes=notes)
    normalised = (raw - center) / scale
    evidence = (evidence_raw - center) / scale
    if not evidence_labels.any():
        calibration.heatmap_threshold = float(np.quantile(evidence, 0.99))
        calibration.notes.append("no anomalies to calibrate on: heatmap threshold is the 99th percentile of normal scores")
    else:
        calibration.heatmap_threshold = threshold_for_recall(evidence_labels, evidence, config.target_recall)
    if not labels.any():
        calibration.notes.append("no anomalies in val: the gate is not used (heatmap on every image)")
    else:
        if (labels == 0).sum() == 0:
            calibration.notes.append("no normal val images: false positives cannot be bounded, so the heatmap runs on every image")
        flags = normalised >= calibration.heatmap_threshold
        heatmap_fpr = float(flags[labels == 0].mean()) if (labels == 0).any() else 0.0
        calibration.gate_low, calibration.gate_high = choose_gate_band(
            labels, gate_scores, flags, config.target_recall, heatmap_fpr + config.max_extra_fpr, config.max_call_rate
        )
    calibration.val = _val_summary(calibration, labels, gate_scores, normalised)
    if labels.any() and (labels == 0).any() and calibration.val["heatmap_call_rate"] > config.max_call_rate + 1e-9:
        calibration.notes.append(
            f"over the call budget ({config.max_call_rate:.0%}): the gate is too weak to keep the val false-positive rate within "
            f"{config.max_extra_fpr} of the heatmap alone ({heatmap_fpr:.3f}) with fewer calls; call rate {calibration.val['heatmap_call_rate']:.2f}"
        )
    return calibration


def _calibrate_gate_only(domain: str, labels: np.ndarray, gate_scores: np.ndarray, config: CalibrationConfig) -> DomainCalibration:
    notes = ["no memory bank (no normal training images): the gate alone decides"]
    if labels.sum() == 0:
        threshold = math.inf
        notes.append("no anomalies in val either: every image is passed as normal")
    else:
        threshold = threshold_for_recall(labels, gate_scores, config.target_recall)
    if (labels == 0).sum() == 0:
        notes.append("no normal val images: false-positive rate cannot be measured here")
    calibration = DomainCalibration(domain, False, threshold, threshold, notes=notes)
    calibration.val = _val_summary(calibration, labels, gate_scores, None)
    return calibration


def _val_summary(calibration: DomainCalibration, labels: np.ndarray, gate_scores: np.ndarray, normalised: np.ndarray | None) -> dict:
    calls = np.array([calibration.needs_heatmap(g) for g in gate_scores])
    decisions = gate_scores >= calibration.gate_high
    if normalised is not None:
        decisions = np.where(calls, normalised >= calibration.heatmap_threshold, decisions)
    n_pos, n_neg = int(labels.sum()), int((labels == 0).sum())
    found, false_alarms = int(decisions[labels == 1].sum()), int(decisions[labels == 0].sum())
    recall_ci, fpr_ci = wilson_interval(found, n_pos), wilson_interval(false_alarms, n_neg)
    return {
        "n": int(len(labels)),
        "n_anomaly": n_pos,
        "n_normal": n_neg,
        "recall": found / n_pos if n_pos else None,
        "recall_ci": recall_ci.as_list() if recall_ci else None,
        "false_positive_rate": false_alarms / n_neg if n_neg else None,
        "false_positive_rate_ci": fpr_ci.as_list() if fpr_ci else None,
        "heatmap_call_rate": float(calls.mean()) if len(calls) else 0.0,
    }


def recall_evidence_shortfall(val: dict, target_recall: float) -> str | None:
    """Why a domain's val split cannot support ``target_recall`` at 95 % confidence, or None if it can.

    The target is supported when the lower end of the val recall's Wilson interval reaches it.
    """
    if not val.get("n_anomaly"):
        return "no defects in val: recall cannot be measured"
    low, high = val["recall_ci"]
    if low >= target_recall:
        return None
    return (
        f"val recall {val['recall']:.3f} on {val['n_anomaly']} defects, 95 % interval {low:.3f}-{high:.3f}: too wide to "
        f"support the target {target_recall}; at least {trials_needed(target_recall)} defects are needed (all found)"
    )
