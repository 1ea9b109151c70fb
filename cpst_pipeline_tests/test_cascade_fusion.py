"""Fusion of gate and heatmap scores: the fit, the grouped cross-validated decision, the plain-float model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from cpst_pipeline.cascade.fusion import FusionConfig, FusionModel, decide_fusion, fit_fusion, gate_logit


def _evidence(seed: int, gate_signal: float, heatmap_signal: float, n: int = 240):
    """Two scores that see the defect through independent noise; three images per group."""
    rng = np.random.default_rng(seed)
    labels = np.repeat((rng.random(n // 3) < 0.3).astype(int), 3)
    gate = 1 / (1 + np.exp(-(gate_signal * labels - 1.0 + rng.normal(size=n))))
    heatmap = heatmap_signal * labels + rng.normal(size=n)
    groups = np.repeat([f"part{i}" for i in range(n // 3)], 3)
    return labels, gate, heatmap, groups


def test_two_independent_views_fuse_better_than_either() -> None:
    labels, gate, heatmap, groups = _evidence(0, 1.5, 1.5)
    decision = decide_fusion(labels, gate, heatmap, groups)
    assert decision.use and decision.reason.startswith("fused")
    assert decision.gate_auroc == pytest.approx(roc_auc_score(labels, gate))
    assert decision.heatmap_auroc == pytest.approx(roc_auc_score(labels, heatmap))
    assert decision.fused_cv_auroc >= max(decision.gate_auroc, decision.heatmap_auroc) + 0.01
    assert decision.model.gate_weight > 0 and decision.model.heatmap_weight > 0
    # the in-sample fused ranking beats both singles too (what the calibration thresholds)
    assert roc_auc_score(labels, decision.model.score(gate, heatmap)) > decision.heatmap_auroc


def test_a_useless_gate_is_not_fused() -> None:
    labels, gate, heatmap, groups = _evidence(1, 0.0, 2.5)
    decision = decide_fusion(labels, gate, heatmap, groups)
    assert not decision.use and decision.reason.startswith("no fusion")
    assert decision.fused_cv_auroc < decision.heatmap_auroc + 0.01
    summary = decision.summary()
    assert "model" not in summary and json.loads(json.dumps(summary)) == summary


def test_the_margin_is_required() -> None:
    labels, gate, heatmap, groups = _evidence(0, 1.5, 1.5)
    decision = decide_fusion(labels, gate, heatmap, groups, FusionConfig(min_auroc_gain=0.5))
    assert not decision.use and decision.model is not None


def test_too_few_defect_groups_means_no_fusion() -> None:
    labels, gate, heatmap, _ = _evidence(2, 1.5, 1.5, n=30)
    groups = np.where(labels == 1, "the-defective-part", np.arange(30).astype(str))
    decision = decide_fusion(labels, gate, heatmap, groups)
    assert not decision.use and decision.fused_cv_auroc is None and decision.model is None
    assert "groups hold an anomaly" in decision.reason


def test_standardisation_is_folded_into_plain_weights() -> None:
    labels, gate, heatmap, _ = _evidence(3, 1.0, 2.0)
    model = fit_fusion(labels, gate, heatmap)
    features = np.column_stack([gate_logit(gate), heatmap])
    mean, std = features.mean(axis=0), features.std(axis=0)
    reference = LogisticRegression(class_weight="balanced").fit((features - mean) / std, labels)
    np.testing.assert_allclose(model.score(gate, heatmap), reference.decision_function((features - mean) / std), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="both normal and anomalous"):
        fit_fusion(np.zeros(5, int), gate[:5], heatmap[:5])


def test_model_is_plain_json_and_scores_scalars_like_arrays() -> None:
    model = FusionModel(-1.25, 0.5, 2.0)
    data = json.loads(json.dumps(model.to_dict(), allow_nan=False))
    assert data == {"intercept": -1.25, "gate_weight": 0.5, "heatmap_weight": 2.0}
    assert FusionModel.from_dict(data) == model
    gates, heatmaps = np.linspace(0, 1, 101), np.linspace(-3, 5, 101)
    batch = model.score(gates, heatmaps)
    assert all(float(model.score(float(g), float(h))) == b for g, h, b in zip(gates, heatmaps, batch))
    assert np.isfinite(model.score(np.array([0.0, 1.0]), np.zeros(2))).all()  # saturated gates stay finite
