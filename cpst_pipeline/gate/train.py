"""Train the gate on both classes, weighted so every domain's normals and anomalies count equally."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cpst_pipeline.gate.model import GateNet


@dataclass(frozen=True)
class GateTrainConfig:
    hidden: int = 64
    dropout: float = 0.2
    epochs: int = 400
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    seed: int = 0


def balanced_sample_weights(labels: np.ndarray, domains: list[str]) -> np.ndarray:
    """Each (domain, class) cell gets the same total weight, so rare defects are not drowned out."""
    labels = np.asarray(labels)
    domain_array = np.asarray(domains)
    weights = np.zeros(len(labels), dtype=np.float64)
    cells = {(d, y) for d, y in zip(domain_array, labels)}
    for domain, label in cells:
        members = (domain_array == domain) & (labels == label)
        weights[members] = 1.0 / members.sum()
    return (weights * len(labels) / weights.sum()).astype(np.float32)


# A one-class domain's gate outputs sigmoid(+-30): that class with certainty, for every image.
CONSTANT_LOGIT = 30.0


def constant_gate(embedding_dim: int, domain: str, anomalous: bool) -> GateNet:
    """The gate of a domain whose training images are all of one class: nothing to learn, so it
    gives every image that class (calibration then leaves the decision to the heatmap, or to the
    gate alone where the domain has no memory bank)."""
    gate = GateNet(embedding_dim, [domain])
    with torch.no_grad():
        for parameter in gate.layers.parameters():
            parameter.zero_()
        gate.layers[-1].bias.fill_(CONSTANT_LOGIT if anomalous else -CONSTANT_LOGIT)
    return gate.eval()


def train_gate(embeddings: np.ndarray, labels: np.ndarray, domains: list[str], config: GateTrainConfig) -> GateNet:
    """Full-batch AdamW on (N, E) embeddings; labels 1 = anomaly. Needs both classes."""
    labels = np.asarray(labels, dtype=np.float32)
    if labels.min() == labels.max():
        raise ValueError("the gate needs normal and anomalous training images; a one-class gate learns a constant")
    torch.manual_seed(config.seed)
    x = torch.from_numpy(np.asarray(embeddings, dtype=np.float32))
    y = torch.from_numpy(labels)
    gate = GateNet(x.shape[1], sorted(set(domains)), hidden=config.hidden, dropout=config.dropout)
    gate.feature_mean.copy_(x.mean(dim=0))
    gate.feature_std.copy_(x.std(dim=0).clamp_min(1e-6))
    onehot = gate.domain_onehot(list(domains))
    weights = torch.from_numpy(balanced_sample_weights(labels, list(domains)))
    optimiser = torch.optim.AdamW(gate.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    gate.train()
    for _ in range(config.epochs):
        optimiser.zero_grad()
        loss = F.binary_cross_entropy_with_logits(gate(x, onehot), y, weight=weights)
        loss.backward()
        optimiser.step()
    return gate.eval()
