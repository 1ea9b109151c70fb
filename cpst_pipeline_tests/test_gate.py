"""The gate MLP: training, balanced weights, pickle-free save/load, unseen domains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from cpst_pipeline.gate.model import GateNet, load_gate, save_gate
from cpst_pipeline.gate.train import GateTrainConfig, balanced_sample_weights, train_gate

pytestmark = pytest.mark.usefixtures("single_torch_thread")


FAST = GateTrainConfig(epochs=150, learning_rate=1e-2, hidden=16)


def _synthetic(n: int, seed: int, dim: int = 12) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Two domains with different offsets; anomalies shifted along a few dimensions."""
    rng = np.random.default_rng(seed)
    domains = ["metal" if i % 3 else "tile" for i in range(n)]
    labels = (rng.random(n) < 0.3).astype(int)
    x = rng.normal(size=(n, dim))
    x[np.array(domains) == "tile"] += 3.0  # domain offset larger than the anomaly shift
    x[labels == 1, :3] += 2.0
    return x.astype(np.float32), labels, domains


@pytest.fixture(scope="module")
def trained() -> GateNet:
    x, y, domains = _synthetic(150, seed=0)
    return train_gate(x, y, domains, FAST)


def test_train_gate_refuses_one_class_labels() -> None:
    x = np.zeros((6, 4), np.float32)
    for labels in (np.zeros(6), np.ones(6)):
        with pytest.raises(ValueError, match="normal and anomalous"):
            train_gate(x, labels, ["a"] * 6, FAST)


def test_gate_separates_separable_embeddings(trained: GateNet) -> None:
    x, y, domains = _synthetic(200, seed=1)  # held-out draw of the same distribution
    scores = trained.predict_proba(torch.from_numpy(x), domains).numpy()
    assert scores.shape == (200,) and ((scores >= 0) & (scores <= 1)).all()
    assert roc_auc_score(y, scores) > 0.95
    assert trained.domains == ["metal", "tile"]


def test_gate_standardisation_statistics_come_from_training_data() -> None:
    x, y, domains = _synthetic(60, seed=2)
    gate = train_gate(x, y, domains, GateTrainConfig(epochs=1))
    np.testing.assert_allclose(gate.feature_mean.numpy(), x.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(gate.feature_std.numpy(), x.std(axis=0, ddof=1), rtol=1e-4)


def test_balanced_sample_weights_give_every_cell_equal_total_weight() -> None:
    domains = ["a"] * 10 + ["b"] * 6 + ["c"] * 3
    labels = np.array([0] * 8 + [1] * 2 + [0] * 5 + [1] * 1 + [0] * 3)
    weights = balanced_sample_weights(labels, domains)
    assert weights.shape == (19,) and weights.dtype == np.float32
    assert weights.sum() == pytest.approx(19.0, rel=1e-5)  # mean weight 1 keeps the loss scale
    cells = {(d, y) for d, y in zip(domains, labels)}
    assert len(cells) == 5
    totals = [weights[(np.array(domains) == d) & (labels == y)].sum() for d, y in cells]
    np.testing.assert_allclose(totals, totals[0], rtol=1e-5)
    # within a cell all samples weigh the same; a lone anomaly weighs 8x a normal of its domain
    assert weights[15] == pytest.approx(5 * weights[10], rel=1e-5)
    assert weights[8] == pytest.approx(4 * weights[0], rel=1e-5)


def test_save_load_round_trip_is_exact_and_pickle_free(trained: GateNet, tmp_path: Path) -> None:
    directory = save_gate(trained, tmp_path / "gate")
    assert sorted(p.name for p in directory.iterdir()) == ["gate.json", "gate.safetensors"]
    hparams = json.loads((directory / "gate.json").read_text())
    assert hparams == {"embedding_dim": 12, "domains": ["metal", "tile"], "hidden": 16, "dropout": 0.2}
    tensors = load_file(str(directory / "gate.safetensors"))
    assert set(tensors) == set(trained.state_dict())

    loaded = load_gate(directory)
    assert not loaded.training
    x, _, domains = _synthetic(40, seed=3)
    before = trained.predict_proba(torch.from_numpy(x), domains)
    after = loaded.predict_proba(torch.from_numpy(x), domains)
    assert torch.equal(before, after)
    assert torch.equal(loaded.feature_mean, trained.feature_mean)
    assert torch.equal(loaded.feature_std, trained.feature_std)


def test_predict_proba_is_deterministic_even_after_train_mode(trained: GateNet) -> None:
    x, _, domains = _synthetic(30, seed=4)
    first = trained.predict_proba(torch.from_numpy(x), domains)
    trained.train()  # dropout on; predict_proba must switch it off again
    second = trained.predict_proba(torch.from_numpy(x), domains)
    assert torch.equal(first, second)


def test_unseen_domain_gets_no_domain_prior(trained: GateNet) -> None:
    x, _, _ = _synthetic(5, seed=5)
    embeddings = torch.from_numpy(x)
    scores = trained.predict_proba(embeddings, ["never-seen"] * 5)
    assert scores.shape == (5,) and torch.isfinite(scores).all()
    with torch.inference_mode():
        expected = torch.sigmoid(trained(embeddings, torch.zeros(5, 2)))
    assert torch.allclose(scores, expected)
    # a known domain does use its one-hot column
    assert not torch.allclose(scores, trained.predict_proba(embeddings, ["metal"] * 5))
