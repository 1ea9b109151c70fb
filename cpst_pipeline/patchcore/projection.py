"""A linear projection of patch features onto their principal components, fitted on a bank's
normal patches.

Adding the backbone's deepest stage raised val image AUROC on both shared datasets, but it
triples the feature dimension, and the kNN search, the heatmap path's largest cost, grows with
it. The leading principal components of normal patches keep most of that gain at the old
dimension (BENCHMARKS.md, "Patch projection"); pooling channels, as the paper does, lost it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# Patches per image that the components are fitted on, and the cap on all of them together:
# a few tens of thousands pin down a 472 x 152 basis, and the SVD stays a second or two.
SAMPLE_PER_IMAGE = 64
MAX_SAMPLE = 65_536


@dataclass(frozen=True)
class PatchProjection:
    mean: np.ndarray  # (D,) float32 mean normal patch
    components: np.ndarray  # (D, d) float32 orthonormal columns, leading component first

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        """(..., D) patch features -> (..., d) float32."""
        if patches.shape[-1] != len(self.mean):
            raise ValueError(f"patches have {patches.shape[-1]} features, the projection expects {len(self.mean)}")
        # torch, not numpy: numpy's OpenBLAS threads spin after a product and slow the next
        # faiss search (as in MemoryBank.search_exact).
        with torch.inference_mode():
            centred = torch.from_numpy(np.ascontiguousarray(patches)).float() - torch.from_numpy(self.mean)
            return (centred @ torch.from_numpy(self.components)).numpy()


def fit_patch_projection(grids: Sequence[np.ndarray], dim: int, seed: int = 0) -> PatchProjection:
    """Principal components of an even random sample of the patches of ``grids`` ((..., D) each)."""
    rng = np.random.default_rng(seed)
    per_image = max(1, min(SAMPLE_PER_IMAGE, MAX_SAMPLE // max(1, len(grids))))
    sample = []
    for grid in grids:
        flat = grid.reshape(-1, grid.shape[-1])
        sample.append(flat[rng.choice(len(flat), min(per_image, len(flat)), replace=False)])
    values = np.concatenate(sample).astype(np.float64)
    if dim >= values.shape[1]:
        raise ValueError(f"cannot project {values.shape[1]} features onto {dim}")
    # A sample smaller than ``dim`` (a handful of tiny images) spans fewer directions: keep those.
    mean = values.mean(axis=0)
    _, _, rows = np.linalg.svd(values - mean, full_matrices=False)
    return PatchProjection(mean.astype(np.float32), np.ascontiguousarray(rows[:dim].T, dtype=np.float32))
