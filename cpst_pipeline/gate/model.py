"""The gate: a small MLP over an image embedding plus the image's domain.

It costs one low-resolution backbone pass and a few thousand multiply-adds, and
decides which images are clear enough to skip the heatmap model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from cpst_pipeline.io_utils import atomic_path, write_json_atomic


class GateNet(nn.Module):
    def __init__(self, embedding_dim: int, domains: list[str], hidden: int = 64, dropout: float = 0.2):
        super().__init__()
        self.domains = list(domains)
        self.hparams = {"embedding_dim": embedding_dim, "domains": self.domains, "hidden": hidden, "dropout": dropout}
        # Standardisation statistics from the training set, fixed and saved with the weights.
        self.register_buffer("feature_mean", torch.zeros(embedding_dim))
        self.register_buffer("feature_std", torch.ones(embedding_dim))
        self.layers = nn.Sequential(
            nn.Linear(embedding_dim + len(self.domains), hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def domain_onehot(self, domains: list[str]) -> torch.Tensor:
        onehot = torch.zeros(len(domains), len(self.domains))
        for row, domain in enumerate(domains):
            if domain in self.domains:  # an unseen domain gets no domain prior, not an error
                onehot[row, self.domains.index(domain)] = 1.0
        return onehot

    def forward(self, embeddings: torch.Tensor, domain_onehot: torch.Tensor) -> torch.Tensor:
        standardised = (embeddings - self.feature_mean) / self.feature_std
        return self.layers(torch.cat([standardised, domain_onehot], dim=1)).squeeze(1)

    @torch.inference_mode()
    def predict_proba(self, embeddings: torch.Tensor, domains: list[str]) -> torch.Tensor:
        self.eval()
        return torch.sigmoid(self(embeddings.float(), self.domain_onehot(domains)))


def save_gate(gate: GateNet, directory: Path) -> Path:
    """Weights as safetensors and hyper-parameters as JSON: nothing is unpickled at load time."""
    directory = Path(directory)
    with atomic_path(directory / "gate.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in gate.state_dict().items()}, str(tmp))
    write_json_atomic(directory / "gate.json", gate.hparams)
    return directory


def load_gate(directory: Path) -> GateNet:
    directory = Path(directory)
    hparams = json.loads((directory / "gate.json").read_text())
    gate = GateNet(**hparams)
    gate.load_state_dict(load_file(str(directory / "gate.safetensors")))
    return gate.eval()
