"""Folds by group, stratified by class."""

from __future__ import annotations

import numpy as np
import pytest

from cpst_pipeline.evaluation.folds import FoldError, group_folds


def _data(seed: int = 0, n_groups: int = 30):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, n_groups)
    groups = np.repeat([f"part{g}" for g in range(n_groups)], sizes)
    labels = np.repeat((rng.random(n_groups) < 0.3).astype(int), sizes)
    return labels, groups


def test_groups_stay_together_and_every_fold_trains_on_both_classes() -> None:
    labels, groups = _data()
    folds = group_folds(labels, groups, 5, seed=3)
    assert folds.shape == labels.shape and set(folds) == set(range(5))
    for group in set(groups):
        assert len(set(folds[groups == group])) == 1
    for fold in range(5):
        assert set(labels[folds != fold]) == {0, 1}
    # stratified: anomalous groups spread over the folds within one of each other
    anomalous_groups = [len({g for g in groups[(folds == f) & (labels == 1)]}) for f in range(5)]
    assert max(anomalous_groups) - min(anomalous_groups) <= 1


def test_folds_are_deterministic_and_independent_of_row_order() -> None:
    labels, groups = _data(1)
    first = group_folds(labels, groups, 4, seed=0)
    assert np.array_equal(first, group_folds(labels, groups, 4, seed=0))
    order = np.random.default_rng(0).permutation(len(labels))
    assert np.array_equal(group_folds(labels[order], groups[order], 4, seed=0), first[order])
    assert not np.array_equal(group_folds(labels, groups, 4, seed=1), first)


def test_fewer_groups_than_folds_gives_one_fold_per_group() -> None:
    labels = np.array([1, 1, 0, 0, 0])
    groups = np.array(["a", "b", "c", "c", "d"])
    folds = group_folds(labels, groups, 10)
    assert sorted(set(folds)) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "labels, groups",
    [
        ([1, 1, 0, 0], ["a", "a", "b", "c"]),  # every anomaly in one group
        ([1, 0, 0, 0], ["a", "b", "c", "d"]),  # a single anomaly
        ([0, 0, 0, 0], ["a", "b", "c", "d"]),  # no anomaly
        ([1, 1, 0, 1], ["a", "b", "c", "d"]),  # a single normal image
    ],
)
def test_too_few_groups_of_a_class_is_a_clear_error(labels, groups) -> None:
    with pytest.raises(FoldError, match="at least 2 of each"):
        group_folds(np.array(labels), np.array(groups), 5)


def test_mixed_groups_count_for_both_classes() -> None:
    folds = group_folds(np.array([1, 0, 1, 0]), np.array(["a", "a", "b", "b"]), 5)
    assert sorted(set(folds)) == [0, 1]  # each fold trains on the other group, which holds both classes


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="n_folds"):
        group_folds([0, 1], ["a", "b"], 1)
    with pytest.raises(ValueError, match="one length"):
        group_folds([0, 1], ["a"], 2)
    with pytest.raises(ValueError, match="0/1"):
        group_folds([0, 2], ["a", "b"], 2)
