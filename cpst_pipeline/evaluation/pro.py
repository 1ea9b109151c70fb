"""PRO: per-region overlap, the MVTec AD localisation metric, integrated up to a false-positive rate.

Pixel AUROC is dominated by large defects; PRO weighs every connected defect region equally.
For a threshold t, PRO(t) is the mean over regions of the share of the region's pixels scoring
>= t, and FPR(t) the share of defect-free pixels scoring >= t. The metric is the area under
PRO over FPR in [0, max_fpr], divided by max_fpr (1.0 is perfect; random maps score about
max_fpr / 2).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

MAX_FPR = 0.3
# FPR grid points the curve is evaluated at; the integral's error shrinks with 1 / FPR_STEPS^2.
FPR_STEPS = 300


class ProAccumulator:
    """Collects region and defect-free pixel scores image by image; ``result`` integrates the curve.

    ``stride`` > 1 keeps every stride-th pixel in both directions (regions are found on the full
    mask first, so thin defects are still one region each).
    """

    def __init__(self, stride: int = 1, max_fpr: float = MAX_FPR) -> None:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if not 0.0 < max_fpr <= 1.0:
            raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
        self.stride = stride
        self.max_fpr = max_fpr
        self._regions: list[np.ndarray] = []
        self._normal: list[np.ndarray] = []

    def add(self, mask: ArrayLike | None, anomaly_map: ArrayLike) -> None:
        """Add one image; ``mask`` is bool HxW (None: no defect pixels)."""
        scores = np.asarray(anomaly_map, dtype=np.float32)
        if scores.ndim != 2 or not np.isfinite(scores).all():
            raise ValueError(f"anomaly_map must be a finite HxW array, got shape {scores.shape}")
        labels = np.zeros(scores.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
        if labels.shape != scores.shape:
            raise ValueError(f"mask shape {labels.shape} does not match anomaly_map shape {scores.shape}")
        regions, count = ndimage.label(labels, structure=np.ones((3, 3), bool))
        keep = (slice(None, None, self.stride), slice(None, None, self.stride))
        regions, scores = regions[keep], scores[keep]
        self._normal.append(scores[regions == 0])
        for region in range(1, count + 1):
            pixels = scores[regions == region]
            if pixels.size:  # a region thinner than the stride can vanish from the grid
                self._regions.append(np.sort(pixels))

    def result(self) -> float | None:
        """Normalised area under PRO(FPR) up to ``max_fpr``; None without regions or defect-free pixels."""
        if not self._regions or not any(n.size for n in self._normal):
            return None
        normal = np.sort(np.concatenate(self._normal))
        n = normal.size
        # Thresholds at the normal-score quantiles for FPR 0, step, ..., max_fpr (just above the
        # highest normal score for FPR 0); ties can push the measured FPR a little higher.
        ranks = np.ceil((1.0 - np.linspace(0.0, self.max_fpr, FPR_STEPS + 1)) * n).astype(int)
        thresholds = np.where(ranks >= n, np.nextafter(normal[-1], np.float32(np.inf)), normal[np.minimum(ranks, n - 1)])
        fpr = (n - np.searchsorted(normal, thresholds, side="left")) / n
        overlap = np.mean([(r.size - np.searchsorted(r, thresholds, side="left")) / r.size for r in self._regions], axis=0)
        inside = fpr <= self.max_fpr
        x = np.append(fpr[inside], self.max_fpr)
        y = np.append(overlap[inside], np.interp(self.max_fpr, fpr, overlap))
        return float(np.trapezoid(y, x) / self.max_fpr)
