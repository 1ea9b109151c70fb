"""Is an image like the training images of the domain it comes with?

A blank frame, a frame from the wrong camera or another product can get a confident "normal"
from a gate that never saw anything like it. So each domain keeps its training images' gate
embeddings (standardised like the router's); an image whose nearest training image is farther
than the domain's radius is flagged as unlike the domain instead of being scored.

The radius is fitted on held-out distances: each training image's distance to the nearest
training image of another group (another physical part), so near-duplicates of one part do
not shrink it. It is the ``QUANTILE`` of those distances times ``MARGIN``, values chosen on
validation normals (``python -m cpst_pipeline.benchmark.novelty``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUANTILE = 0.99
# 1.0 flags no val normal of the benchmark datasets either, but leaves a small domain (a dozen
# training images) no slack: its radius is then about its largest held-out distance.
MARGIN = 1.25
# References kept per domain (a seeded sample beyond that): serving cost and file size stay flat.
MAX_REFERENCES = 4000


@dataclass
class DomainNovelty:
    references: dict[str, np.ndarray]  # domain -> (N, E) float32 standardised training embeddings
    radii: dict[str, float]  # distance to the nearest reference beyond which an image is unlike the domain

    @classmethod
    def fit(cls, standardised: np.ndarray, domains: list[str], groups: list[str] | None = None, seed: int = 0) -> DomainNovelty:
        """``groups`` (the physical part of each image; None: every image is its own) keep
        copies of one part out of each other's held-out distances."""
        labels = np.asarray(domains)
        parts = np.asarray(groups if groups is not None else [str(i) for i in range(len(labels))])
        rng = np.random.default_rng(seed)
        references, radii = {}, {}
        for domain in sorted(set(domains)):
            members = np.flatnonzero(labels == domain)
            if len(members) > MAX_REFERENCES:
                members = np.sort(rng.choice(members, MAX_REFERENCES, replace=False))
            own = standardised[members].astype(np.float32)
            references[domain] = own
            radii[domain] = MARGIN * float(np.quantile(held_out_distances(own, parts[members]), QUANTILE))
        return cls(references, radii)

    def distance(self, standardised: np.ndarray, domain: str) -> float:
        """Distance from one standardised embedding to the nearest training image of ``domain``."""
        return float(_pairwise(np.atleast_2d(standardised).astype(np.float32), self.references[domain]).min())

    def reason(self, standardised: np.ndarray, domain: str) -> str | None:
        """Why the image is unlike every training image of ``domain``, or None when it is like them."""
        distance, radius = self.distance(standardised, domain), self.radii[domain]
        if distance <= radius:
            return None
        return f"unlike every training image of domain {domain}: distance {distance:.1f} > radius {radius:.1f}"


def held_out_distances(embeddings: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each embedding's distance to its nearest neighbour of another group (of any other
    embedding when all share one group); infinite for a lone image, which cannot be judged."""
    distances = _pairwise(embeddings, embeddings)
    same = groups[:, None] == groups[None, :]
    if same.all():
        same = np.eye(len(groups), dtype=bool)
    distances[same] = np.inf
    return distances.min(axis=1)


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0))
