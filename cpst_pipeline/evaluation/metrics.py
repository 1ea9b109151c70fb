"""Image- and pixel-level metrics for the cascade, with undefined values reported honestly.

Conventions: ``y_true`` is 1 for an anomaly and 0 for a normal item, a higher score means
more anomalous, and a decision of 1 means "flagged as anomalous". A metric that is not
defined for the data (AUROC with a single class, precision with no positive decisions, ...)
is ``None`` in dicts and ``NaN`` in DataFrames, never a made-up 0.0 or 1.0.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from cpst_pipeline.evaluation.intervals import wilson_interval

# Anomalous pixels compared per searchsorted call in PixelAurocAccumulator.result():
# bounds the int64 temporaries to ~16 MB regardless of how many pixels were added.
_PIXEL_BLOCK = 1_000_000


def _labels(values: ArrayLike, name: str = "y_true", length: int | None = None) -> np.ndarray:
    """Validate a 1-D array of 0/1 (or bool) values and return it as bool."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if length is not None and array.size != length:
        raise ValueError(f"{name} has {array.size} values, expected {length}")
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must contain only 0/1 (1 = anomaly)")
    return array.astype(bool)


def _scores(values: ArrayLike, length: int) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (length,):
        raise ValueError(f"scores must be 1-D with {length} values, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("scores must be finite (no NaN/inf)")
    return array


def labels_and_scores(y_true: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated (bool labels, float64 scores) of equal length; raises ValueError on bad input."""
    y = _labels(y_true)
    if y.size == 0:
        raise ValueError("no samples")
    return y, _scores(scores, y.size)


def _one_class_reason(y: np.ndarray) -> str | None:
    """Why ranking metrics are undefined for these labels, or None when both classes exist."""
    if y.all():
        return "only anomalies present"
    if not y.any():
        return "only normals present"
    return None


def _ratio(numerator: int, denominator: int, name: str, reason: str, notes: list[str]) -> float | None:
    if denominator == 0:
        notes.append(f"{name} undefined: {reason}")
        return None
    return numerator / denominator


def auroc(y_true: ArrayLike, scores: ArrayLike) -> float | None:
    """Image-level ROC AUC, or None when only one class is present."""
    y, s = labels_and_scores(y_true, scores)
    return None if _one_class_reason(y) else float(roc_auc_score(y, s))


def average_precision(y_true: ArrayLike, scores: ArrayLike) -> float | None:
    """Average precision (area under the PR curve), or None when only one class is present."""
    y, s = labels_and_scores(y_true, scores)
    return None if _one_class_reason(y) else float(average_precision_score(y, s))


def classification_metrics(y_true: ArrayLike, scores: ArrayLike, decisions: ArrayLike) -> dict[str, Any]:
    """Threshold metrics of ``decisions`` plus ranking metrics of ``scores``.

    Returns n, n_anomaly, n_normal, accuracy, precision, recall, f1, false_positive_rate,
    recall_ci and false_positive_rate_ci (95 % Wilson intervals, [low, high]), auroc,
    average_precision, confusion {tn, fp, fn, tp} and notes (why a value is None).
    F1 is None whenever precision or recall is undefined.
    """
    y, s = labels_and_scores(y_true, scores)
    d = _labels(decisions, name="decisions", length=y.size)
    tp = int(np.sum(y & d))
    fp = int(np.sum(~y & d))
    fn = int(np.sum(y & ~d))
    tn = int(np.sum(~y & ~d))

    notes: list[str] = []
    precision = _ratio(tp, tp + fp, "precision", "no positive decisions", notes)
    recall = _ratio(tp, tp + fn, "recall", "no anomalies", notes)
    fpr = _ratio(fp, fp + tn, "false_positive_rate", "no normals", notes)
    if precision is None or recall is None:
        f1 = None
        notes.append("f1 undefined: precision or recall undefined")
    else:
        f1 = 2 * tp / (2 * tp + fp + fn)

    ranking = ranking_metrics(y, s)
    return {
        "n": ranking["n"],
        "n_anomaly": ranking["n_anomaly"],
        "n_normal": ranking["n_normal"],
        "accuracy": (tp + tn) / y.size,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_positive_rate": fpr,
        "recall_ci": _interval(tp, tp + fn),
        "false_positive_rate_ci": _interval(fp, fp + tn),
        "auroc": ranking["auroc"],
        "average_precision": ranking["average_precision"],
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "notes": notes + ranking["notes"],
    }


def ranking_metrics(y_true: ArrayLike, scores: ArrayLike) -> dict[str, Any]:
    """Ranking metrics of ``scores`` alone (no threshold): n, n_anomaly, n_normal, auroc,
    average_precision and notes; for a score that decides nothing by itself, such as the
    gate's inside a cascade."""
    y, s = labels_and_scores(y_true, scores)
    one_class = _one_class_reason(y)
    return {
        "n": int(y.size),
        "n_anomaly": int(y.sum()),
        "n_normal": int((~y).sum()),
        "auroc": None if one_class else float(roc_auc_score(y, s)),
        "average_precision": None if one_class else float(average_precision_score(y, s)),
        "notes": [f"auroc undefined: {one_class}", f"average_precision undefined: {one_class}"] if one_class else [],
    }


def _interval(successes: int, trials: int) -> list[float] | None:
    interval = wilson_interval(successes, trials)
    return None if interval is None else interval.as_list()


def _count_at_or_above(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return sorted_values.size - np.searchsorted(sorted_values, thresholds, side="left")


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray | int) -> np.ndarray:
    """Elementwise ratio that is NaN (undefined) where the denominator is zero."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.broadcast_to(np.asarray(denominator, dtype=np.float64), numerator.shape)
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def threshold_sweep(y_true: ArrayLike, scores: ArrayLike, n_thresholds: int = 50) -> pd.DataFrame:
    """Metrics of the rule ``score >= threshold`` at up to ``n_thresholds`` score quantiles.

    Thresholds are observed scores (lower quantiles), unique and ascending. Undefined values
    (precision with nothing flagged, recall without anomalies, FPR without normals) are NaN.
    """
    if n_thresholds < 1:
        raise ValueError("n_thresholds must be >= 1")
    y, s = labels_and_scores(y_true, scores)
    thresholds = np.unique(np.quantile(s, np.linspace(0.0, 1.0, n_thresholds), method="lower"))
    tp = _count_at_or_above(np.sort(s[y]), thresholds)
    fp = _count_at_or_above(np.sort(s[~y]), thresholds)
    n_anomaly = int(y.sum())
    precision = _safe_divide(tp, tp + fp)
    recall = _safe_divide(tp, n_anomaly)
    f1 = _safe_divide(2 * tp, 2 * tp + fp + (n_anomaly - tp))
    # Same rule as classification_metrics: F1 is undefined where precision or recall is.
    f1[np.isnan(precision) | np.isnan(recall)] = np.nan
    return pd.DataFrame(
        {
            "threshold": thresholds,
            "recall": recall,
            "precision": precision,
            "false_positive_rate": _safe_divide(fp, y.size - n_anomaly),
            "f1": f1,
            "flagged_rate": (tp + fp) / y.size,
        }
    )


def threshold_for_recall(y_true: ArrayLike, scores: ArrayLike, target_recall: float) -> float:
    """Largest threshold t such that the rule ``score >= t`` reaches ``target_recall``.

    Recall only changes at anomaly scores, so t is the k-th largest anomaly score where k is
    the smallest count with k / n_anomaly >= target. Ties at t are all flagged by ``>=``, so
    they can only raise recall above the target.
    """
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    y, s = labels_and_scores(y_true, scores)
    anomaly_scores = np.sort(s[y])[::-1]
    n_anomaly = anomaly_scores.size
    if n_anomaly == 0:
        raise ValueError("threshold_for_recall needs at least one anomaly; recall is undefined without one")
    k = math.ceil(target_recall * n_anomaly)
    # ceil() over-counts when float rounding lifts e.g. 0.7 * 10 to 7.000000000000001.
    if k > 1 and (k - 1) / n_anomaly >= target_recall:
        k -= 1
    return float(anomaly_scores[k - 1])


def roc_points(y_true: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(false_positive_rate, true_positive_rate) of the ROC curve; needs both classes."""
    y, s = labels_and_scores(y_true, scores)
    if reason := _one_class_reason(y):
        raise ValueError(f"ROC curve undefined: {reason}")
    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr


def pr_points(y_true: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) of the precision-recall curve; needs both classes."""
    y, s = labels_and_scores(y_true, scores)
    if reason := _one_class_reason(y):
        raise ValueError(f"PR curve undefined: {reason}")
    precision, recall, _ = precision_recall_curve(y, s)
    return recall, precision


def latency_summary(seconds: ArrayLike) -> dict[str, Any]:
    """Mean, median and 95th percentile of per-item latencies, in milliseconds.

    Unmeasured items must be dropped by the caller: NaN raises rather than silently
    shrinking n or turning the mean into NaN.
    """
    values = np.asarray(seconds, dtype=np.float64).ravel()
    if not np.isfinite(values).all():
        raise ValueError("latencies must be finite; drop unmeasured items (NaN) first")
    if values.size == 0:
        return {"n": 0, "mean_ms": None, "p50_ms": None, "p95_ms": None}
    ms = values * 1000.0
    return {
        "n": int(ms.size),
        "mean_ms": float(ms.mean()),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
    }


def _merged(chunks: list[np.ndarray]) -> np.ndarray:
    """Collapse the chunk list into one array in place so memory is not duplicated on repeat calls."""
    if len(chunks) > 1:
        chunks[:] = [np.concatenate(chunks)]
    return chunks[0] if chunks else np.empty(0, dtype=np.float32)


class PixelAurocAccumulator:
    """Exact pixel-level AUROC over many (mask, anomaly map) pairs in bounded memory.

    Scores are kept as float32, split by label at ``add`` time (4 bytes per pixel; 50 M
    pixels is ~200 MB, briefly twice that while merging). ``result`` sorts each class and
    counts, for every anomalous pixel, the normal pixels below it (ties count one half) -
    the Mann-Whitney form of AUROC, exact for the float32-rounded scores.
    ``stride`` > 1 keeps every stride-th pixel in both directions (a regular grid).
    """

    def __init__(self, stride: int = 1) -> None:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = stride
        self._anomalous: list[np.ndarray] = []
        self._normal: list[np.ndarray] = []

    def add(self, mask: ArrayLike | None, anomaly_map: ArrayLike) -> None:
        """Add one image. ``mask`` is a bool (or 0/1) HxW array, None meaning no defect pixels."""
        scores = np.asarray(anomaly_map)
        if scores.ndim != 2:
            raise ValueError(f"anomaly_map must be HxW, got shape {scores.shape}")
        labels = np.zeros(scores.shape, dtype=bool) if mask is None else np.asarray(mask)
        if labels.shape != scores.shape:
            raise ValueError(f"mask shape {labels.shape} does not match anomaly_map shape {scores.shape}")
        if labels.dtype != bool and not np.isin(labels, (0, 1)).all():
            raise ValueError("mask must be bool or 0/1 (threshold 0/255 masks with mask > 0)")
        labels = labels[:: self.stride, :: self.stride].astype(bool)
        scores = scores[:: self.stride, :: self.stride].astype(np.float32)
        if not np.isfinite(scores).all():
            raise ValueError("anomaly_map must be finite (no NaN/inf)")
        self._anomalous.append(scores[labels])
        self._normal.append(scores[~labels])

    def result(self) -> float | None:
        """Pixel AUROC, or None when nothing was added or all pixels share one class."""
        anomalous = _merged(self._anomalous)
        normal = _merged(self._normal)
        if anomalous.size == 0 or normal.size == 0:
            return None
        anomalous.sort()  # sorted queries keep searchsorted cache-friendly
        normal.sort()
        twice_wins = 0  # 2 * (pairs with anomalous > normal) + ties, as an exact integer
        for start in range(0, anomalous.size, _PIXEL_BLOCK):
            block = anomalous[start : start + _PIXEL_BLOCK]
            twice_wins += int(np.searchsorted(normal, block, side="left").sum(dtype=np.int64))
            twice_wins += int(np.searchsorted(normal, block, side="right").sum(dtype=np.int64))
        return twice_wins / (2 * anomalous.size * normal.size)
