import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cpst_pipeline.evaluation import metrics
from cpst_pipeline.evaluation.metrics import (
    PixelAurocAccumulator,
    classification_metrics,
    ranking_metrics,
    latency_summary,
    pr_points,
    roc_points,
    threshold_for_recall,
    threshold_sweep,
)

# ---------------------------------------------------------------- classification_metrics


def test_perfect_separation():
    m = classification_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert m["confusion"] == {"tn": 2, "fp": 0, "fn": 0, "tp": 2}
    assert (m["n"], m["n_anomaly"], m["n_normal"]) == (4, 2, 2)
    for key in ("accuracy", "precision", "recall", "f1", "auroc", "average_precision"):
        assert m[key] == pytest.approx(1.0), key
    assert m["false_positive_rate"] == 0.0
    assert m["notes"] == []


def test_inverted_scores_and_decisions():
    m = classification_metrics([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0])
    assert m["auroc"] == pytest.approx(0.0)
    # Positives at ranks 3 and 4: AP = (1/3 + 2/4) / 2.
    assert m["average_precision"] == pytest.approx(5 / 12)
    assert m["confusion"] == {"tn": 0, "fp": 2, "fn": 2, "tp": 0}
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["false_positive_rate"] == 1.0
    assert m["accuracy"] == 0.0


def test_tied_scores_count_half():
    # anomaly 0.5 ties normal 0.5 (1/2), beats 0.2; anomaly 0.9 beats both -> 3.5 / 4
    m = classification_metrics([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9], [1, 1, 0, 1])
    assert m["auroc"] == pytest.approx(0.875)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == 1.0
    assert m["f1"] == pytest.approx(0.8)
    assert m["false_positive_rate"] == pytest.approx(0.5)


def test_only_anomalies_gives_none_with_reason():
    m = classification_metrics([1, 1, 1], [0.2, 0.5, 0.9], [0, 1, 1])
    assert m["auroc"] is None and m["average_precision"] is None
    assert m["false_positive_rate"] is None
    assert m["recall"] == pytest.approx(2 / 3)
    assert "auroc undefined: only anomalies present" in m["notes"]
    assert any(note.startswith("false_positive_rate undefined") for note in m["notes"])


def test_only_normals_and_no_positive_decisions():
    m = classification_metrics([0, 0], [0.1, 0.3], [0, 0])
    assert m["auroc"] is None and m["average_precision"] is None
    assert m["precision"] is None and m["recall"] is None and m["f1"] is None
    assert m["false_positive_rate"] == 0.0 and m["accuracy"] == 1.0
    assert "auroc undefined: only normals present" in m["notes"]
    assert "precision undefined: no positive decisions" in m["notes"]


def test_missed_everything_has_undefined_precision_not_zero():
    m = classification_metrics([0, 1, 1], [0.1, 0.3, 0.2], [0, 0, 0])
    assert m["precision"] is None
    assert m["recall"] == 0.0
    assert m["f1"] is None
    assert m["auroc"] == 1.0


@pytest.mark.parametrize(
    ("y", "s", "d"),
    [
        ([0, 2], [0.1, 0.2], [0, 1]),  # label not 0/1
        ([0, 1], [0.1], [0, 1]),  # length mismatch
        ([0, 1], [0.1, np.nan], [0, 1]),  # NaN score
        ([0, 1], [0.1, 0.2], [0, 1, 1]),  # decision length mismatch
        ([], [], []),  # empty
    ],
)
def test_invalid_inputs_raise(y, s, d):
    with pytest.raises(ValueError):
        classification_metrics(y, s, d)


# ---------------------------------------------------------------- threshold_sweep


def test_threshold_sweep_hand_computed():
    sweep = threshold_sweep([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], n_thresholds=10)
    assert list(sweep.columns) == ["threshold", "recall", "precision", "false_positive_rate", "f1", "flagged_rate"]
    np.testing.assert_allclose(sweep["threshold"], [0.1, 0.35, 0.4, 0.8])
    np.testing.assert_allclose(sweep["recall"], [1.0, 1.0, 0.5, 0.5])
    np.testing.assert_allclose(sweep["precision"], [0.5, 2 / 3, 0.5, 1.0])
    np.testing.assert_allclose(sweep["false_positive_rate"], [1.0, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(sweep["flagged_rate"], [1.0, 0.75, 0.5, 0.25])
    np.testing.assert_allclose(sweep["f1"], [2 / 3, 0.8, 0.5, 2 / 3])


def test_threshold_sweep_matches_classification_metrics():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(y, 1.0), 1)  # rounding creates ties
    sweep = threshold_sweep(y, s, n_thresholds=25)
    assert sweep["threshold"].is_monotonic_increasing and sweep["threshold"].is_unique
    assert len(sweep) <= 25
    for row in sweep.itertuples():
        m = classification_metrics(y, s, s >= row.threshold)
        assert row.recall == pytest.approx(m["recall"])
        assert row.precision == pytest.approx(m["precision"])
        assert row.false_positive_rate == pytest.approx(m["false_positive_rate"])
        assert row.f1 == pytest.approx(m["f1"])


def test_threshold_sweep_undefined_is_nan():
    sweep = threshold_sweep([0, 0, 0], [0.1, 0.2, 0.3])
    assert sweep["recall"].isna().all() and sweep["f1"].isna().all()
    np.testing.assert_allclose(sweep["false_positive_rate"], [1.0, 2 / 3, 1 / 3])


# ---------------------------------------------------------------- threshold_for_recall


def _recall(y, s, t):
    y = np.asarray(y, bool)
    return np.sum(y & (np.asarray(s) >= t)) / y.sum()


@pytest.mark.parametrize(("target", "expected"), [(0.5, 0.8), (0.51, 0.7), (0.75, 0.7), (1.0, 0.6), (0.1, 0.9)])
def test_threshold_for_recall_hand_computed(target, expected):
    y = [1, 1, 1, 1, 0]
    s = [0.9, 0.8, 0.7, 0.6, 0.75]
    assert threshold_for_recall(y, s, target) == pytest.approx(expected)


def test_threshold_for_recall_with_ties():
    y = [1, 1, 1, 1, 0]
    s = [0.9, 0.5, 0.5, 0.1, 0.5]
    # Any t above 0.5 keeps only the 0.9 anomaly (recall 1/4); at 0.5 both tied anomalies count.
    assert threshold_for_recall(y, s, 0.5) == 0.5
    assert threshold_for_recall(y, s, 0.75) == 0.5
    assert threshold_for_recall(y, s, 0.25) == 0.9


def test_threshold_for_recall_exact_fraction_despite_float_rounding():
    y = np.ones(10, int)
    s = np.arange(1.0, 11.0)
    # 0.7 * 10 == 7.000000000000001 in floating point; 7 of 10 anomalies is still enough.
    assert threshold_for_recall(y, s, 0.7) == 4.0


def test_threshold_for_recall_is_largest_feasible_threshold():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 20, 300).astype(float)  # heavy ties
    for target in np.linspace(0.01, 1.0, 37):
        t = threshold_for_recall(y, s, target)
        assert _recall(y, s, t) >= target
        assert _recall(y, s, np.nextafter(t, np.inf)) < target


def test_threshold_for_recall_errors():
    with pytest.raises(ValueError, match="at least one anomaly"):
        threshold_for_recall([0, 0], [0.1, 0.2], 0.9)
    for target in (0.0, 1.5):
        with pytest.raises(ValueError):
            threshold_for_recall([0, 1], [0.1, 0.2], target)


# ---------------------------------------------------------------- PixelAurocAccumulator


def _pixel_data(seed: int = 2, n_images: int = 5, shape=(32, 40)):
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for index in range(n_images):
        mask = rng.random(shape) < 0.15
        if index == 0:
            mask[:] = False  # a good image: contributes only negatives
        score = rng.normal(mask.astype(float), 1.0)
        maps.append(np.round(score, 1).astype(np.float32))  # rounding creates ties
        masks.append(mask)
    return masks, maps


def _sklearn_pixel_auroc(masks, maps, stride=1):
    labels = np.concatenate([m[::stride, ::stride].ravel() for m in masks])
    scores = np.concatenate([a[::stride, ::stride].ravel() for a in maps])
    return roc_auc_score(labels, scores)


@pytest.mark.parametrize("stride", [None, 1, 3])
def test_pixel_auroc_matches_sklearn(stride, monkeypatch):
    monkeypatch.setattr(metrics, "_PIXEL_BLOCK", 97)  # exercise the blockwise counting
    masks, maps = _pixel_data()
    acc = PixelAurocAccumulator() if stride is None else PixelAurocAccumulator(stride=stride)
    for mask, anomaly_map in zip(masks, maps):
        acc.add(mask, anomaly_map)
    expected = _sklearn_pixel_auroc(masks, maps, stride or 1)
    assert acc.result() == pytest.approx(expected, abs=1e-12)
    assert acc.result() == pytest.approx(expected, abs=1e-12)  # repeatable


def test_pixel_auroc_accepts_none_mask_and_adding_after_result():
    masks, maps = _pixel_data(seed=3)
    acc = PixelAurocAccumulator()
    acc.add(masks[1], maps[1])
    first = acc.result()
    assert first == pytest.approx(roc_auc_score(masks[1].ravel(), maps[1].ravel()))
    acc.add(None, maps[0])  # None = no defect pixels
    acc.add(masks[2].astype(np.uint8), maps[2])
    expected = _sklearn_pixel_auroc([masks[1], np.zeros_like(masks[0]), masks[2]], [maps[1], maps[0], maps[2]])
    assert acc.result() == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_one_class_is_none():
    acc = PixelAurocAccumulator()
    assert acc.result() is None
    acc.add(np.zeros((4, 4), bool), np.random.default_rng(0).random((4, 4)))
    assert acc.result() is None


@pytest.mark.parametrize(
    ("mask", "anomaly_map"),
    [
        (np.zeros((4, 5), bool), np.zeros((5, 4))),  # shape mismatch
        (np.zeros((4, 4, 1), bool), np.zeros((4, 4, 1))),  # not HxW
        (np.full((4, 4), 255, np.uint8), np.zeros((4, 4))),  # 0/255 mask
        (np.zeros((4, 4), bool), np.full((4, 4), np.nan)),  # NaN scores
    ],
)
def test_pixel_auroc_rejects_bad_input(mask, anomaly_map):
    with pytest.raises(ValueError):
        PixelAurocAccumulator().add(mask, anomaly_map)


def test_pixel_auroc_rejects_bad_stride():
    with pytest.raises(ValueError):
        PixelAurocAccumulator(stride=0)


# ---------------------------------------------------------------- latency, curve points


def test_latency_summary():
    summary = latency_summary([0.001, 0.002, 0.003, 0.004])
    assert summary["n"] == 4
    assert summary["mean_ms"] == pytest.approx(2.5)
    assert summary["p50_ms"] == pytest.approx(2.5)
    assert summary["p95_ms"] == pytest.approx(3.85)
    assert latency_summary([]) == {"n": 0, "mean_ms": None, "p50_ms": None, "p95_ms": None}
    with pytest.raises(ValueError, match="drop unmeasured"):
        latency_summary([0.001, np.nan])


def test_curve_points():
    fpr, tpr = roc_points([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert fpr[0] == 0.0 and tpr[-1] == 1.0
    recall, precision = pr_points([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert recall.max() == 1.0 and precision.max() == 1.0
    with pytest.raises(ValueError, match="only normals"):
        roc_points([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="only anomalies"):
        pr_points([1, 1], [0.1, 0.2])


def test_ranking_metrics_match_classification_metrics_ranking_part():
    y, s = [0, 0, 1, 1, 0], [0.1, 0.7, 0.8, 0.4, 0.2]
    ranking = ranking_metrics(y, s)
    full = classification_metrics(y, s, [0, 1, 1, 0, 0])
    for key in ("n", "n_anomaly", "n_normal", "auroc", "average_precision"):
        assert ranking[key] == full[key], key
    assert "recall" not in ranking and "f1" not in ranking
    assert ranking_metrics([1, 1], [0.2, 0.9])["auroc"] is None
    assert ranking_metrics([1, 1], [0.2, 0.9])["notes"] == ["auroc undefined: only anomalies present", "average_precision undefined: only anomalies present"]
