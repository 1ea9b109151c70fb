"""Pick the product domain of an unlabelled image, or say it looks like none of them; and tell
whether an image is like the training images of the domain it comes with.

Nearest centroid of the gate embeddings (standardised over all training images).
An image farther from its nearest centroid than that domain's own training images
ever were (99th percentile, times a margin) is reported as unknown: it is not
forced into a memory bank that was never meant for it. Within a domain, the nearest
training image decides (see ood.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpst_pipeline.cascade.ood import DomainNovelty
from cpst_pipeline.io_utils import atomic_path, write_json_atomic

UNKNOWN_MARGIN = 1.25


@dataclass
class DomainRouter:
    domains: list[str]
    mean: np.ndarray  # (E,) standardisation
    std: np.ndarray
    centroids: np.ndarray  # (K, E) in standardised space
    radii: np.ndarray  # (K,) distance beyond which an image is unknown
    novelty: DomainNovelty

    @classmethod
    def fit(cls, embeddings: np.ndarray, domains: list[str], groups: list[str] | None = None) -> "DomainRouter":
        """``groups``: the physical part of each image, see ``DomainNovelty.fit``."""
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
        return cls(names, mean, std, centroids, radii, DomainNovelty.fit(standardised, domains, groups))

    def standardise(self, embeddings: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(embeddings) - self.mean) / self.std

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, K) distance of each embedding to each domain centroid."""
        return np.linalg.norm(self.standardise(embeddings)[:, None, :] - self.centroids[None, :, :], axis=2)

    def unlike_domain(self, embedding: np.ndarray, domain: str) -> str | None:
        """Why one image is unlike every training image of ``domain``, or None when it is not."""
        return self.novelty.reason(self.standardise(embedding)[0], domain)

    def route(self, embeddings: np.ndarray) -> list[str | None]:
        """Nearest domain per embedding, or None where it is outside every domain's radius."""
        distances = self.distances(embeddings)
        nearest = distances.argmin(axis=1)
        return [self.domains[k] if distances[i, k] <= self.radii[k] else None for i, k in enumerate(nearest)]

    def save(self, path: Path) -> Path:
        """``path`` (JSON) plus the domains' reference embeddings beside it, as one .npy."""
        names = sorted(self.novelty.references)
        counts = [len(self.novelty.references[d]) for d in names]
        with atomic_path(_references_path(path)) as tmp, open(tmp, "wb") as file:
            np.save(file, np.concatenate([self.novelty.references[d] for d in names]).astype(np.float32))
        return write_json_atomic(
            path,
            {
                "domains": self.domains,
                "mean": self.mean.tolist(),
                "std": self.std.tolist(),
                "centroids": self.centroids.tolist(),
                "radii": self.radii.tolist(),
                "novelty": {"radii": self.novelty.radii, "reference_counts": dict(zip(names, counts))},
            },
        )

    @classmethod
    def load(cls, path: Path) -> "DomainRouter":
        data = json.loads(Path(path).read_text())
        stacked = np.load(_references_path(path), allow_pickle=False)
        counts = data["novelty"]["reference_counts"]
        ends = np.cumsum(list(counts.values()))
        references = {d: stacked[end - n : end] for (d, n), end in zip(counts.items(), ends)}
        novelty = DomainNovelty(references, data["novelty"]["radii"])
        return cls(data["domains"], *(np.asarray(data[k]) for k in ("mean", "std", "centroids", "radii")), novelty)


def _references_path(path: Path) -> Path:
    return Path(path).with_name(f"{Path(path).stem}_references.npy")
