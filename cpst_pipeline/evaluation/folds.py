"""Folds by group, stratified by class, for cross-fitting and grouped cross-validation.

A group (one physical part, one source) lies in a single fold, so a model scored on a
held-out fold never saw any image of that part. Groups that hold an anomaly are dealt
round-robin first, then the normal-only groups continue the deal, so every fold gets a
fair share of both. Deterministic for a seed and independent of row order.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


class FoldError(ValueError):
    """The data cannot be split into folds whose training parts hold both classes."""


def group_folds(labels: ArrayLike, groups: ArrayLike, n_folds: int, seed: int = 0) -> np.ndarray:
    """(N,) fold number per image, 0 .. min(n_folds, groups) - 1.

    Raises FoldError when fewer than two groups hold an anomaly or fewer than two hold a
    normal image: some fold's training part would then lack a class.
    """
    labels = np.asarray(labels).astype(int)
    groups = np.asarray(groups).astype(str)
    if labels.ndim != 1 or groups.shape != labels.shape:
        raise ValueError(f"labels and groups must be 1-D of one length, got {labels.shape} and {groups.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0/1 (1 = anomaly)")
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    names, inverse = np.unique(groups, return_inverse=True)
    with_anomaly = np.bincount(inverse, weights=labels, minlength=len(names)) > 0
    with_normal = np.bincount(inverse, weights=1 - labels, minlength=len(names)) > 0
    if with_anomaly.sum() < 2 or with_normal.sum() < 2:
        raise FoldError(
            f"{with_anomaly.sum()} groups hold an anomaly and {with_normal.sum()} a normal image: "
            "cross-fitting needs at least 2 of each, or a fold would train on one class"
        )
    folds = min(n_folds, len(names))
    rng = np.random.default_rng(seed)
    dealt = np.concatenate([rng.permutation(np.flatnonzero(with_anomaly)), rng.permutation(np.flatnonzero(~with_anomaly))])
    fold_of_group = np.empty(len(names), dtype=np.int64)
    fold_of_group[dealt] = np.arange(len(dealt)) % folds
    fold_ids = fold_of_group[inverse]
    for fold in range(folds):
        outside = labels[fold_ids != fold]
        if outside.min() == outside.max():
            # Only mixed groups hold normals and they all landed together: no deal can fix that.
            raise FoldError(f"fold {fold} would leave only class {outside[0]} to train on")
    return fold_ids
