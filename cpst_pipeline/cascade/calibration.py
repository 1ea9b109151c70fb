"""Choose per-domain thresholds on labelled images the calibrated models never trained on.

The evidence (``CalibrationEvidence``) is the domain's val images plus its train_mix
images: the memory bank never saw train_mix, and with out-of-fold gate scores
(gate/crossfit.py) the gate has not either. Without out-of-fold scores
(``train_mix.gate_scores`` None) train_mix informs the heatmap threshold only and the
gate band is fitted on val alone, where one defect of ten decides.

1. Heatmap scores are normalised with the median and spread of the evidence's normal images.
2. The heatmap threshold is the largest that keeps the target recall on the evidence.
3. Fusion (fusion.py): where a logistic fit of both scores beats the better single score
   in grouped cross-validation, images sent to the heatmap are decided on the fused
   score, against its own threshold for the target recall, unless at that threshold it
   breaks the FPR bound of step 4 (ranking better overall, it can still be worse at the
   recall that matters; the heatmap alone then decides).
4. The gate band [gate_low, gate_high) is fitted on the evidence images with gate scores.
   Every candidate keeps the target recall; the FPR bound is the heatmap-alone FPR plus
   ``max_extra_fpr``, the call budget ``max_call_rate``. Among the bands that meet the
   FPR bound, those that keep the recall on val alone as well come first (the served gate
   scored val itself, train_mix only through the out-of-fold gates; an asset check asks
   for the target on val), then those within the budget, then:
   - a gate at least as good as the heatmap stage (AUROC on the evidence, against the
     score the heatmap stage decides on): the fewest heatmap calls, then the fewest
     false positives;
   - a weaker gate: the most heatmap calls, then the fewest false positives. Each image
     it decides alone is a near-guess, and the cheapest band sits exactly on an FPR bound
     that a few dozen images estimate loosely (the demo's val-fitted cascade flagged 62 %
     of normal test images against 38 % for the heatmap alone). Within the budget it uses
     the budget; with no band inside it, that is the heatmap on every image.
   The FPR bound is a quality promise (no worse than the heatmap alone), the budget a
   cost preference: when no band within the budget meets the bound, the budget gives way
   and the notes say so. Only when no band meets the bound at all (the heatmap stage
   misses the recall on these images) does the gate flag defects at an FPR cost: the
   fewest false positives, within the budget if any band is. When no band keeps the
   recall, the heatmap runs on every image. Without the FPR bound the cheapest
   "cascade" would flag everything.

The calibration records what it was fitted on (``DomainCalibration.evidence``) and its
recall and FPR with 95 % Wilson intervals on val and on all the evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cpst_pipeline.cascade.fusion import FusionConfig, decide_fusion
from cpst_pipeline.cascade.policy import DomainCalibration
from cpst_pipeline.evaluation.intervals import trials_needed, wilson_interval
from cpst_pipeline.evaluation.metrics import auroc, threshold_for_recall


@dataclass(frozen=True)
class CalibrationConfig:
    target_recall: float = 0.95
    max_extra_fpr: float = 0.02
    # Share of images the heatmap may see: the cascade's cost budget.
    max_call_rate: float = 0.35
    # Off: every gate gets the fewest-calls band, as a gate at least as good as the heatmap does.
    weak_gate_routing: bool = True
    fuse_scores: bool = True
    fusion: FusionConfig = field(default_factory=FusionConfig)


@dataclass(frozen=True)
class ScoredImages:
    """One split's labelled images of a domain, scored by models that never trained on them."""

    labels: np.ndarray  # (N,) 1 = anomaly
    gate_scores: np.ndarray | None  # (N,) gate probabilities; None: only the gate that trained on them scored them
    raw_heatmap_scores: np.ndarray | None  # (N,) raw image scores; None: the domain has no memory bank
    groups: np.ndarray | None = None  # (N,) group ids for grouped cross-validation; None: one group per image

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or not np.isin(labels, (0, 1)).all():
            raise ValueError("labels must be a 1-D array of 0/1 (1 = anomaly)")
        for name in ("gate_scores", "raw_heatmap_scores", "groups"):
            values = getattr(self, name)
            if values is not None and np.shape(values) != labels.shape:
                raise ValueError(f"{name} has shape {np.shape(values)}, labels {labels.shape}")
        for name in ("gate_scores", "raw_heatmap_scores"):
            values = getattr(self, name)
            if values is not None and not np.isfinite(np.asarray(values, dtype=float)).all():
                raise ValueError(f"{name} must be finite (pass None for images without that score)")


@dataclass(frozen=True)
class CalibrationEvidence:
    """A domain's calibration images: val (scored by the final gate) and optionally train_mix."""

    val: ScoredImages
    train_mix: ScoredImages | None = None

    def __post_init__(self) -> None:
        if self.val.gate_scores is None:
            raise ValueError("val images need gate scores: the gate never trained on them")
        if self.train_mix is not None and (self.train_mix.raw_heatmap_scores is None) != (self.val.raw_heatmap_scores is None):
            raise ValueError("val and train_mix must both have heatmap scores or both lack them (one memory bank per domain)")


def score_normaliser(raw_scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, list[str]]:
    normal = raw_scores[labels == 0]
    notes = []
    if len(normal) < 2:
        notes.append("fewer than 2 normal calibration images: heatmap scores normalised with all of them")
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
    labels: np.ndarray,
    gate_scores: np.ndarray,
    heatmap_flags: np.ndarray,
    target_recall: float,
    max_fpr: float,
    max_call_rate: float = 1.0,
    gate_is_weaker: bool = False,
    served_gate_rows: np.ndarray | None = None,
) -> tuple[float, float]:
    """(gate_low, gate_high) by the rules of the module doc; ``gate_is_weaker``: the gate ranks
    worse than the heatmap stage. ``heatmap_flags``: the heatmap stage's decision per image.
    ``served_gate_rows``: the images the served gate itself scored (val; the others have
    out-of-fold scores): among the bands that meet the FPR bound, those that keep the recall
    on these images as well come first.

    Returns (-inf, inf), the heatmap on every image, when no band keeps the recall or when
    there are no normal images to measure false positives on.
    """
    if not (labels == 0).any():
        return -math.inf, math.inf
    order = np.argsort(gate_scores, kind="stable")
    g, y, h = gate_scores[order], labels[order].astype(int), heatmap_flags[order].astype(int)
    n_neg = (1 - y).sum()
    cum = lambda values: np.concatenate([[0], np.cumsum(values)])  # noqa: E731
    neg, neg_h = cum(1 - y), cum((1 - y) * h)
    cuts = _boundaries(g)
    low, high = np.meshgrid(cuts, cuts, indexing="ij")

    def keeps_recall_on(rows: np.ndarray) -> np.ndarray:
        pos, pos_h = cum(y * rows), cum(y * h * rows)
        true_pos = (pos[-1] - pos[high]) + (pos_h[high] - pos_h[low])
        return true_pos / max(pos[-1], 1) >= target_recall - 1e-12

    false_pos = (neg[-1] - neg[high]) + (neg_h[high] - neg_h[low])
    calls = high - low
    keeps_recall = (low <= high) & keeps_recall_on(np.ones_like(y))
    on_served = keeps_recall if served_gate_rows is None else keeps_recall & keeps_recall_on(np.asarray(served_gate_rows)[order].astype(int))
    in_budget = calls <= max_call_rate * len(g) + 1e-9
    meets_fpr = false_pos / max(n_neg, 1) <= max_fpr + 1e-12
    # np.lexsort sorts by its last key first.
    fewest_false_positives = (calls, false_pos)
    preferred = (false_pos, -calls) if gate_is_weaker else (false_pos, calls)
    tiers = (
        (on_served & meets_fpr & in_budget, preferred),
        (on_served & meets_fpr, preferred),
        (keeps_recall & meets_fpr & in_budget, preferred),
        (keeps_recall & meets_fpr, preferred),
        (keeps_recall & in_budget, fewest_false_positives),
        (keeps_recall, fewest_false_positives),
    )
    choice, keys = next(((c, k) for c, k in tiers if c.any()), (None, None))
    if choice is None:
        return -math.inf, math.inf
    best = np.lexsort(tuple(np.where(choice, k, np.iinfo(np.int64).max).ravel() for k in keys))[0]
    i, j = np.unravel_index(best, calls.shape)
    return _threshold_at(g, int(low[i, j])), _threshold_at(g, int(high[i, j]))


def calibrate_on_evidence(domain: str, evidence: CalibrationEvidence, config: CalibrationConfig) -> DomainCalibration:
    """Thresholds (and maybe a fusion) for one domain, by the rules of the module doc."""
    rows = _Rows.of(evidence)
    if rows.raw is None:
        return _calibrate_gate_only(domain, rows, config)
    center, scale, notes = score_normaliser(rows.raw, rows.labels)
    calibration = DomainCalibration(domain, True, -math.inf, math.inf, center, scale, notes=notes)
    normalised = (rows.raw - center) / scale
    if not rows.labels.any():
        calibration.heatmap_threshold = float(np.quantile(normalised, 0.99))
        calibration.notes.append("no anomalies to calibrate on: heatmap threshold is the 99th percentile of normal scores")
    else:
        calibration.heatmap_threshold = threshold_for_recall(rows.labels, normalised, config.target_recall)
    banded = rows.has_gate
    labels, gate, heatmap = rows.labels[banded], rows.gate[banded], normalised[banded]
    normal = labels == 0
    heatmap_fpr = float((heatmap[normal] >= calibration.heatmap_threshold).mean()) if normal.any() else math.nan
    max_fpr = heatmap_fpr + config.max_extra_fpr
    figures: dict = {"fusion": None}
    if config.fuse_scores and labels.any() and not labels.all():
        decision = decide_fusion(labels, gate, heatmap, rows.groups[banded], config.fusion)
        figures["fusion"] = decision.summary()
        if decision.use:
            fused = decision.model.score(gate, heatmap)
            fused_threshold = threshold_for_recall(labels, fused, config.target_recall)
            fused_fpr = float((fused[normal] >= fused_threshold).mean())
            if fused_fpr <= max_fpr + 1e-12:
                calibration.fusion, calibration.fused_threshold = decision.model, fused_threshold
            else:
                figures["fusion"] |= {
                    "use": False,
                    "reason": f"{decision.reason}; not used: at recall {config.target_recall} the fused score flags "
                    f"{fused_fpr:.3f} of normal images against {heatmap_fpr:.3f} for the heatmap alone",
                }
    if not labels.any():
        calibration.notes.append("no anomalies with gate scores: the gate is not used (heatmap on every image)")
    elif not normal.any():
        calibration.notes.append("no normal images with gate scores: false positives cannot be bounded, so the heatmap runs on every image")
    else:
        margin = calibration.heatmap_margin(gate, heatmap)
        gate_auroc, stage_auroc = auroc(labels, gate), auroc(labels, margin)
        figures |= {"gate_auroc": gate_auroc, "heatmap_stage_auroc": stage_auroc}
        gate_is_weaker = config.weak_gate_routing and gate_auroc < stage_auroc
        calibration.gate_low, calibration.gate_high = choose_gate_band(
            labels, gate, margin >= 0, config.target_recall, max_fpr, config.max_call_rate, gate_is_weaker, rows.is_val[banded]
        )
        _note_broken_bounds(calibration, _summary(calibration, labels, gate, heatmap), heatmap_fpr, max_fpr, config)
        if gate_is_weaker:
            calibration.notes.append(f"the gate ranks worse than the heatmap stage (AUROC {gate_auroc:.3f} against {stage_auroc:.3f}): the band favours heatmap calls")
    calibration.val = _summary(calibration, rows.labels[rows.is_val], rows.gate[rows.is_val], normalised[rows.is_val])
    calibration.evidence = {**rows.fitted_on(), **_summary(calibration, labels, gate, heatmap), **figures}
    return calibration


def calibrate_domain(
    domain: str,
    labels: np.ndarray,
    gate_scores: np.ndarray,
    raw_heatmap_scores: np.ndarray | None,
    config: CalibrationConfig,
    extra_heatmap_evidence: tuple[np.ndarray, np.ndarray] | None = None,
) -> DomainCalibration:
    """Thresholds from val images (labels 1 = anomaly) with the gate band on val alone.

    ``extra_heatmap_evidence`` = (labels, raw heatmap scores) of the gate's training images
    the memory bank never saw: they sharpen the heatmap normalisation and threshold. Give
    ``calibrate_on_evidence`` out-of-fold gate scores for them to fit the band on them too.
    """
    val = ScoredImages(np.asarray(labels, dtype=int), np.asarray(gate_scores, dtype=float), raw_heatmap_scores)
    train_mix = None
    if extra_heatmap_evidence is not None and raw_heatmap_scores is not None:
        train_mix = ScoredImages(np.asarray(extra_heatmap_evidence[0], dtype=int), None, np.asarray(extra_heatmap_evidence[1], dtype=float))
    return calibrate_on_evidence(domain, CalibrationEvidence(val, train_mix), config)


@dataclass(frozen=True)
class _Rows:
    """Val and train_mix stacked; gate scores NaN where there are none."""

    labels: np.ndarray
    gate: np.ndarray
    raw: np.ndarray | None
    groups: np.ndarray
    is_val: np.ndarray

    @property
    def has_gate(self) -> np.ndarray:
        return ~np.isnan(self.gate)

    @classmethod
    def of(cls, evidence: CalibrationEvidence) -> "_Rows":
        parts = [("val_mix", evidence.val)] + ([("train_mix", evidence.train_mix)] if evidence.train_mix is not None else [])

        def stacked(get) -> np.ndarray:
            return np.concatenate([get(name, part) for name, part in parts])

        def groups(name: str, part: ScoredImages) -> np.ndarray:
            own = np.char.add(f"{name}/", np.arange(len(part.labels)).astype(str))
            return own if part.groups is None else np.asarray(part.groups).astype(str)

        no_gate = lambda part: np.full(len(part.labels), np.nan)  # noqa: E731
        return cls(
            labels=stacked(lambda _, p: np.asarray(p.labels, dtype=int)),
            gate=stacked(lambda _, p: no_gate(p) if p.gate_scores is None else np.asarray(p.gate_scores, dtype=float)),
            raw=None if evidence.val.raw_heatmap_scores is None else stacked(lambda _, p: np.asarray(p.raw_heatmap_scores, dtype=float)),
            groups=stacked(groups),
            is_val=stacked(lambda name, p: np.full(len(p.labels), name == "val_mix")),
        )

    def fitted_on(self) -> dict:
        """Which images the band (gate scores needed) and the heatmap threshold were fitted on."""
        train_mix = ~self.is_val
        return {
            "band_fitted_on": {"val_mix": int(self.is_val.sum()), "train_mix": int((train_mix & self.has_gate).sum())},
            "heatmap_threshold_fitted_on": {"val_mix": int(self.is_val.sum()), "train_mix": int(train_mix.sum())} if self.raw is not None else None,
            "train_mix_gate_scores": "out-of-fold" if (train_mix & self.has_gate).any() else "none",
        }


def _note_broken_bounds(calibration: DomainCalibration, outcome: dict, heatmap_fpr: float, max_fpr: float, config: CalibrationConfig) -> None:
    if outcome["heatmap_call_rate"] > config.max_call_rate + 1e-9:
        calibration.notes.append(
            f"no band within the call budget ({config.max_call_rate:.0%}) keeps the recall and the FPR bound: "
            f"{outcome['heatmap_call_rate']:.0%} heatmap calls on the calibration images"
        )
    if outcome["false_positive_rate"] > max_fpr + 1e-12:
        calibration.notes.append(
            f"no band keeps the recall within the FPR bound: false-positive rate {outcome['false_positive_rate']:.3f}"
            f" against {heatmap_fpr:.3f} with the heatmap on every image"
        )


def _calibrate_gate_only(domain: str, rows: _Rows, config: CalibrationConfig) -> DomainCalibration:
    notes = ["no memory bank (no normal training images): the gate alone decides"]
    labels, gate = rows.labels[rows.has_gate], rows.gate[rows.has_gate]
    if labels.sum() == 0:
        threshold = math.inf
        notes.append("no anomalies to calibrate on either: every image is passed as normal")
    else:
        threshold = threshold_for_recall(labels, gate, config.target_recall)
    if (labels == 0).sum() == 0:
        notes.append("no normal calibration images: false-positive rate cannot be measured here")
    calibration = DomainCalibration(domain, False, threshold, threshold, notes=notes)
    calibration.val = _summary(calibration, rows.labels[rows.is_val], rows.gate[rows.is_val], None)
    calibration.evidence = {**rows.fitted_on(), **_summary(calibration, labels, gate, None)}
    return calibration


def _summary(calibration: DomainCalibration, labels: np.ndarray, gate_scores: np.ndarray, normalised: np.ndarray | None) -> dict:
    calls = calibration.heatmap_calls(gate_scores)
    decisions = calibration.decisions(gate_scores, normalised)
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


def recall_evidence_shortfall(figures: dict, target_recall: float) -> str | None:
    """Why a domain's calibration images (``DomainCalibration.val`` or ``.evidence``) cannot support
    ``target_recall`` at 95 % confidence, or None if they can.

    The target is supported when the lower end of the recall's Wilson interval reaches it.
    """
    if not figures.get("n_anomaly"):
        return "no defects to calibrate on: recall cannot be measured"
    low, high = figures["recall_ci"]
    if low >= target_recall:
        return None
    return (
        f"recall {figures['recall']:.3f} on {figures['n_anomaly']} calibration defects, 95 % interval {low:.3f}-{high:.3f}: too wide to "
        f"support the target {target_recall}; at least {trials_needed(target_recall)} defects are needed (all found)"
    )
