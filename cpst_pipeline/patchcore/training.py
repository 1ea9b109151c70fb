"""Fit a domain's memory bank: per-fold coresets, and held-out distances for position statistics.

The normal training images are split by group into folds. Each fold gets its own
greedy coreset and the bank is their union, which costs 1/folds of one coreset over
all patches (greedy k-center work grows with patches x picks). Every image is then
scored against the other folds' coresets - a bank that never saw it or its group -
and those distances give the per-position statistics (patchcore.position_stats).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import numpy as np

from cpst_pipeline.patchcore.bank import (
    BankConfig,
    MemoryBank,
    build_faiss_index,
    capped_coreset_size,
    index_memory_bank,
    select_coreset,
)
from cpst_pipeline.patchcore.position_stats import PositionStats, fit_position_stats


def assign_folds(groups: Sequence[str], folds: int) -> np.ndarray:
    """Fold number per image; a group's images share a fold, groups are dealt round-robin
    in hash order (stable when other groups come and go)."""
    ranked = sorted(set(groups), key=lambda g: hashlib.sha1(str(g).encode()).hexdigest())
    fold_of = {group: rank % max(1, folds) for rank, group in enumerate(ranked)}
    return np.array([fold_of[g] for g in groups], dtype=np.int64)


def _held_out_stats(grids: list[np.ndarray], fold_ids: np.ndarray, coresets: list[np.ndarray], max_images: int) -> PositionStats:
    # An even sample of the images when there are many: the statistics need a few hundred, not thousands.
    step = max(1, -(-len(grids) // max(2, max_images)))
    sampled = np.zeros(len(grids), dtype=bool)
    sampled[::step] = True
    held_out = []
    for fold in range(len(coresets)):
        others = np.concatenate([c for other, c in enumerate(coresets) if other != fold])
        bank = MemoryBank(others, build_faiss_index(others, "flat"))
        for grid in (g for g, f, keep in zip(grids, fold_ids, sampled) if f == fold and keep):
            distances, _ = bank.search(grid.reshape(-1, grid.shape[-1]), k=1)
            held_out.append(distances[:, 0].reshape(grid.shape[:2]))
    return fit_position_stats(np.stack(held_out))


def fit_memory_bank(grids: list[np.ndarray], groups: Sequence[str], config: BankConfig, meta: dict | None = None) -> MemoryBank:
    """``grids``: one (h, w, D) patch-feature array per normal image, all the same shape;
    ``groups``: each image's group (images of one part or one source must share a fold)."""
    if not grids:
        raise ValueError("cannot build a memory bank from zero images")
    if len(grids) != len(groups):
        raise ValueError(f"{len(grids)} images but {len(groups)} group labels")
    shapes = {g.shape for g in grids}
    if len(shapes) != 1:
        raise ValueError(f"all images of a bank need the same patch grid, got {sorted(shapes)}")
    started = time.perf_counter()
    fold_ids = assign_folds(groups, config.folds)
    n_folds = int(fold_ids.max()) + 1
    dim = grids[0].shape[-1]
    coresets = []
    for fold in range(n_folds):
        patches = np.concatenate([g.reshape(-1, dim) for g, f in zip(grids, fold_ids) if f == fold])
        coresets.append(select_coreset(patches, capped_coreset_size(len(patches), config, n_folds), config.seed + fold))
        del patches
    # With one group there is nothing held out, so no statistics: raw distances are used.
    stats = _held_out_stats(grids, fold_ids, coresets, config.stats_images) if n_folds > 1 else None
    info = dict(meta or {}, source_patches=int(sum(g.shape[0] * g.shape[1] for g in grids)), folds=n_folds, position_stats=stats is not None)
    bank = index_memory_bank(np.concatenate(coresets), config, info, stats)
    bank.meta["build_seconds"] = round(time.perf_counter() - started, 3)
    return bank
