"""Pick the product domain of an unlabelled image, or say it looks like none of them.

Nearest centroid of the gate embeddings (standardised over all training images).
An image farther from its nearest centroid than that domain's own training images
ever were (99th percentile, times a margin) is reported as unknown: it is not
forced into a memory bank that was never meant for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpst_pipeline.io_utils import write_json_atomic

UNKNOWN_MARGIN = 1.25


@dataclass
class DomainRouter:
    domains: list[str]
    mean: np.ndarray  # (E,) standardisation
    std: np.ndarray
    centroids: np.ndarray  # (K, E) in standardised space
    radii: np.ndarray  # (K,) distance beyond which an image is unknown

    @classmethod
    def fit(cls, embeddings: np.ndarray, domains: list[str]) -> "DomainRouter":
        embeddings = np.asarray(embeddings, dtype=np.float64)
        labels = np.asarray(domains)
        names = sorted(set(domains))
        if not names:
            raise ValueError("cannot fit a router without training images")
        mean, std = embeddings.mean(axis=0), embeddings.std(axis=0) + 1e-6
        standardised = (embeddings - mean) / std
        centroids = np.stack([standardised[labels == name].mean(axis=0) for name in names])
        radii = np.array(
            [UNKNOWN_MARGIN * np.quantile(np.linalg.norm(standardised[labels == name] - centroid, axis=1), 0.99) for name, centroid in zip(names, centroids)]
        )
        return cls(names, mean, std, centroids, radii)

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, K) distance of each embedding to each domain centroid."""
        standardised = (np.atleast_2d(embeddings) - self.mean) / self.std
        return np.linalg.norm(standardised[:, None, :] - self.centroids[None, :, :], axis=2)

    def route(self, embeddings: np.ndarray) -> list[str | None]:
        """Nearest domain per embedding, or None where it is outside every domain's radius."""
        distances = self.distances(embeddings)
        nearest = distances.argmin(axis=1)
        return [self.domains[k] if distances[i, k] <= self.radii[k] else None for i, k in enumerate(nearest)]

    def save(self, path: Path) -> Path:
        return write_json_atomic(
            path,
            {
                "domains": self.domains,
                "mean": self.mean.tolist(),
                "std": self.std.tolist(),
                "centroids": self.centroids.tolist(),
                "radii": self.radii.tolist(),
            },
        )

    @classmethod
    def load(cls, path: Path) -> "DomainRouter":
        data = json.loads(Path(path).read_text())
        return cls(data["domains"], *(np.asarray(data[k]) for k in ("mean", "std", "centroids", "radii")))
