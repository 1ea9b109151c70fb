"""Per-position statistics of normal patch distances.

Patches at the image border see zero padding and rarer content, so even on normal
images their nearest-bank distance is larger and noisier than in the middle: on
KolektorSDD and Magnetic-tile most normal images had their worst patch on the
border, which buried real defects. Standardising each grid position by the mean
and spread of distances that held-out normal images get there removes that bias
without cropping the border away.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A position whose held-out distances barely vary must not turn tiny differences into
# huge scores: its spread is floored at this fraction of the median spread.
MIN_STD_FRACTION = 0.1


@dataclass(frozen=True)
class PositionStats:
    mean: np.ndarray  # (h, w) mean distance of held-out normal patches at each grid position
    std: np.ndarray  # (h, w) their standard deviation, floored

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mean.shape)

    def standardise(self, grid: np.ndarray) -> np.ndarray:
        if grid.shape != self.mean.shape:
            raise ValueError(f"patch grid {grid.shape} does not match the bank's position statistics {self.mean.shape}")
        return ((grid - self.mean) / self.std).astype(np.float32)


def fit_position_stats(grids: np.ndarray) -> PositionStats:
    """``grids`` (n, h, w): distances of held-out normal images' patches to a bank without them."""
    if grids.ndim != 3 or len(grids) < 2:
        raise ValueError(f"need at least two held-out distance grids of shape (n, h, w), got {grids.shape}")
    values = grids.astype(np.float64)
    std = values.std(axis=0)
    floor = MIN_STD_FRACTION * float(np.median(std))
    return PositionStats(mean=values.mean(axis=0).astype(np.float32), std=np.maximum(std, max(floor, 1e-6)).astype(np.float32))
