"""Cross-fitted gate scores: every training image scored by a gate that never saw its group."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cpst_pipeline.evaluation.folds import FoldError
from cpst_pipeline.gate.crossfit import CrossFitConfig, crossfit_gate
from cpst_pipeline.gate.train import GateTrainConfig, train_gate

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# No dropout or weight decay and many steps: the gate memorises whatever it is shown.
MEMORISING = GateTrainConfig(hidden=128, dropout=0.0, weight_decay=0.0, epochs=300, learning_rate=1e-2)
FAST = GateTrainConfig(epochs=150, learning_rate=1e-2, hidden=16)


def _duplicated_noise(n_groups: int = 40, dim: int = 32, seed: int = 0):
    """Pure-noise embeddings, two identical images per group, labels drawn per group: nothing to learn."""
    rng = np.random.default_rng(seed)
    x = np.repeat(rng.normal(size=(n_groups, dim)), 2, axis=0).astype(np.float32)
    labels = np.repeat((rng.random(n_groups) < 0.4).astype(int), 2)
    groups = np.repeat([f"g{i}" for i in range(n_groups)], 2)
    return x, labels, groups, ["d"] * len(labels)


def test_out_of_fold_scores_come_from_gates_that_never_saw_the_group() -> None:
    x, labels, groups, domains = _duplicated_noise()
    in_sample = train_gate(x, labels, domains, MEMORISING).predict_proba(torch.from_numpy(x), domains).numpy()
    assert roc_auc_score(labels, in_sample) > 0.99  # memorised

    grouped = crossfit_gate(x, labels, groups, domains, MEMORISING, CrossFitConfig(folds=5))
    assert roc_auc_score(labels, grouped.scores) < 0.75  # noise stays noise out of fold
    # Split by image instead, an image whose twin landed in another fold was in effect seen: perfect scores.
    by_image = crossfit_gate(x, labels, np.arange(len(labels)).astype(str), domains, MEMORISING, CrossFitConfig(folds=5))
    twin = np.arange(len(labels)) ^ 1
    leaked = by_image.fold_ids[twin] != by_image.fold_ids
    assert leaked.sum() > 20 and roc_auc_score(labels[leaked], by_image.scores[leaked]) > 0.95


def test_shapes_fold_summaries_and_determinism() -> None:
    rng = np.random.default_rng(1)
    n = 90
    labels = (rng.random(n) < 0.3).astype(int)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    x[labels == 1, :2] += 2.5
    groups = np.array([f"part{i // 3}" for i in range(n)])
    domains = ["metal"] * n
    first = crossfit_gate(x, labels, groups, domains, FAST, CrossFitConfig(folds=4, seed=2))
    assert first.scores.shape == first.fold_ids.shape == (n,)
    assert np.isfinite(first.scores).all() and ((first.scores >= 0) & (first.scores <= 1)).all()
    assert roc_auc_score(labels, first.scores) > 0.9  # a real signal survives cross-fitting
    assert [f.fold for f in first.folds] == [0, 1, 2, 3]
    for summary in first.folds:
        held_out = first.fold_ids == summary.fold
        assert summary.held_out_images == held_out.sum() and summary.train_images == n - held_out.sum()
        assert summary.held_out_anomalies == labels[held_out].sum()
        assert summary.train_anomalies == labels[~held_out].sum()
        assert summary.held_out_groups == len(set(groups[held_out]))
        assert not set(groups[held_out]) & set(groups[~held_out])
    again = crossfit_gate(x, labels, groups, domains, FAST, CrossFitConfig(folds=4, seed=2))
    assert np.array_equal(first.scores, again.scores) and np.array_equal(first.fold_ids, again.fold_ids)


def test_one_group_of_defects_cannot_be_cross_fitted() -> None:
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    labels = np.array([1, 1] + [0] * 8)
    groups = np.array(["defective-part", "defective-part"] + [f"n{i}" for i in range(8)])
    with pytest.raises(FoldError, match="1 groups hold an anomaly"):
        crossfit_gate(x, labels, groups, ["d"] * 10, FAST)


def test_mismatched_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="embeddings"):
        crossfit_gate(np.zeros((4, 3)), np.array([0, 1, 0]), np.array(["a", "b", "c"]), ["d"] * 3, FAST)
