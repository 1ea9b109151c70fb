"""Out-of-fold gate scores for the gate's own training images.

The gate is trained K times, each time without one fold of groups, and scores that fold.
Every training image thus gets a score from a gate that never saw it or any image of its
group, so train_mix images can join val as calibration evidence: Kolektor's val holds
10 defects, its train_mix several times more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cpst_pipeline.evaluation.folds import group_folds
from cpst_pipeline.evaluation.metrics import auroc
from cpst_pipeline.gate.train import GateTrainConfig, train_gate


@dataclass(frozen=True)
class CrossFitConfig:
    folds: int = 5
    seed: int = 0  # fold assignment; the gate's own seed is GateTrainConfig.seed


@dataclass(frozen=True)
class FoldSummary:
    fold: int
    train_images: int
    train_anomalies: int
    held_out_images: int
    held_out_anomalies: int
    held_out_groups: int
    held_out_auroc: float | None  # None: the held-out fold holds one class only


@dataclass(frozen=True)
class CrossFitScores:
    scores: np.ndarray  # (N,) out-of-fold anomaly probability of every image, in input order
    fold_ids: np.ndarray  # (N,) the fold each image was held out in
    folds: tuple[FoldSummary, ...]


def crossfit_gate(
    embeddings: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    domains: list[str],
    train_config: GateTrainConfig,
    config: CrossFitConfig = CrossFitConfig(),
) -> CrossFitScores:
    """Train ``train_gate`` on all folds but one, score the held-out fold, for every fold.

    Arguments as for ``train_gate`` plus each image's group. Raises
    ``evaluation.folds.FoldError`` (a ValueError) when the groups cannot give every fold
    both classes to train on (fewer than 2 groups with an anomaly or with a normal image).
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    labels = np.asarray(labels, dtype=int)
    groups = np.asarray(groups)
    if embeddings.ndim != 2 or len(embeddings) != len(labels) or len(domains) != len(labels):
        raise ValueError(f"need (N, E) embeddings and N labels and domains, got {embeddings.shape}, {len(labels)}, {len(domains)}")
    fold_ids = group_folds(labels, groups, config.folds, config.seed)
    scores = np.full(len(labels), np.nan)
    domain_array = np.asarray(domains)
    summaries = []
    for fold in range(int(fold_ids.max()) + 1):
        held_out = fold_ids == fold
        gate = train_gate(embeddings[~held_out], labels[~held_out], domain_array[~held_out].tolist(), train_config)
        scores[held_out] = gate.predict_proba(torch.from_numpy(embeddings[held_out]), domain_array[held_out].tolist()).numpy()
        summaries.append(
            FoldSummary(
                fold=fold,
                train_images=int((~held_out).sum()),
                train_anomalies=int(labels[~held_out].sum()),
                held_out_images=int(held_out.sum()),
                held_out_anomalies=int(labels[held_out].sum()),
                held_out_groups=len(set(groups[held_out].tolist())),
                held_out_auroc=auroc(labels[held_out], scores[held_out]),
            )
        )
    return CrossFitScores(scores, fold_ids, tuple(summaries))
