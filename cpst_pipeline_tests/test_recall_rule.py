import numpy as np
import pytest

from cpst_pipeline.cascade.recall_rule import defects_to_flag, threshold_for_new_defects


@pytest.mark.parametrize(
    ("n_defects", "target", "expected"),
    [
        (10, 0.95, 10),  # too few to promise 0.95: every defect is flagged
        (18, 0.95, 18),
        (39, 0.95, 38),  # floor(0.05 * 40) = 2 -> one miss allowed
        (41, 0.95, 40),  # the empirical rule would allow ceil(0.95 * 41) = 39
        (314, 0.95, 300),  # floor(0.05 * 315) = 15 -> 14 misses
        (9, 0.9, 9),
        (10, 0.9, 10),
        (19, 0.9, 18),
        (0, 0.95, 0),
        (5, 1.0, 5),
    ],
)
def test_defects_to_flag(n_defects: int, target: float, expected: int) -> None:
    assert defects_to_flag(n_defects, target) == expected


def test_a_new_defect_is_flagged_at_least_at_the_target_rate() -> None:
    """Exchangeable scores: averaged over many draws, the (n+1)-th defect clears the threshold
    at >= target, where the empirical rule (flag ceil(target n)) falls short."""
    rng = np.random.default_rng(0)
    n, target, draws = 41, 0.95, 20000
    scores = rng.normal(size=(draws, n + 1))
    labels = np.ones(n)
    conformal = np.array([threshold_for_new_defects(labels, s[:n], target) for s in scores])
    empirical = np.sort(scores[:, :n], axis=1)[:, n - int(np.ceil(target * n))]
    assert (scores[:, n] >= conformal).mean() >= target
    assert (scores[:, n] >= empirical).mean() < target


def test_threshold_for_new_defects_picks_the_counted_defect_and_ignores_normals() -> None:
    labels = np.array([0, 1, 1, 1, 0])
    scores = np.array([9.0, 3.0, 1.0, 2.0, 8.0])
    assert threshold_for_new_defects(labels, scores, 0.95) == 1.0
    with pytest.raises(ValueError, match="at least one defect"):
        threshold_for_new_defects(np.zeros(3), scores[:3], 0.95)
    with pytest.raises(ValueError, match="target_recall"):
        defects_to_flag(10, 0.0)
