"""Confidence intervals for rates measured on few images (recall on 10 defects, say).

Wilson score intervals: unlike the normal approximation they stay inside [0, 1] and do not
collapse to a point when every defect was found, which is exactly when a small validation
split looks better than it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import norm

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def as_list(self) -> list[float]:
        return [self.low, self.high]


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(norm.ppf(0.5 + confidence / 2))


def wilson_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> Interval | None:
    """Two-sided Wilson interval of ``successes / trials``; None when there are no trials."""
    if trials < 0 or not 0 <= successes <= max(trials, 0):
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return None
    z2 = _z(confidence) ** 2
    rate = successes / trials
    center = (rate + z2 / (2 * trials)) / (1 + z2 / trials)
    half = math.sqrt(z2) / (1 + z2 / trials) * math.sqrt(rate * (1 - rate) / trials + z2 / (4 * trials**2))
    # At 0 or n successes the bound is exactly 0 or 1; rounding would leave 1 - 1e-16 otherwise.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == trials else min(1.0, center + half)
    return Interval(low, high)


def trials_needed(target: float, confidence: float = CONFIDENCE) -> int:
    """Fewest trials whose Wilson lower bound can reach ``target`` at all (every trial a success).

    With n successes out of n the lower bound is n / (n + z^2), so n >= target z^2 / (1 - target):
    73 defects to support a recall of 0.95 at 95 % confidence.
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"target must be in (0, 1), got {target}")
    return math.ceil(target * _z(confidence) ** 2 / (1 - target) - 1e-9)
