"""How many calibration defects a threshold must flag to promise a recall on new images.

Flagging exactly ``target`` of the calibration defects puts the threshold at the edge of
what those defects allow, and a new defect falls below it more often than ``1 - target``.
Split-conformal counting removes that optimism: if a new defect is exchangeable with the n
calibration defects, a threshold at the k-th lowest of their scores flags it with
probability at least ``1 - k / (n + 1)``. So a rule may miss k - 1 calibration defects
where k = floor((1 - target) (n + 1)); below 1 / (1 - target) - 1 defects (19 for 0.95)
no threshold can promise the target and every calibration defect must be flagged.
"""

from __future__ import annotations

import math

import numpy as np


def defects_to_flag(n_defects: int, target_recall: float) -> int:
    """The fewest of ``n_defects`` calibration defects a rule must flag (see the module doc)."""
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    if n_defects < 0:
        raise ValueError(f"n_defects must be >= 0, got {n_defects}")
    # The tolerance keeps float rounding (1 - 0.95 = 0.05000000000000004) from moving a count.
    allowed_misses = math.floor((1.0 - target_recall) * (n_defects + 1) + 1e-9) - 1
    return n_defects - max(allowed_misses, 0)


def threshold_for_new_defects(labels: np.ndarray, scores: np.ndarray, target_recall: float) -> float:
    """Largest threshold t whose rule ``score >= t`` flags ``defects_to_flag`` of the defects among ``labels`` (1 = defect)."""
    defect_scores = np.sort(np.asarray(scores, dtype=float)[np.asarray(labels) == 1])[::-1]
    if defect_scores.size == 0:
        raise ValueError("a recall threshold needs at least one defect")
    return float(defect_scores[defects_to_flag(defect_scores.size, target_recall) - 1])
