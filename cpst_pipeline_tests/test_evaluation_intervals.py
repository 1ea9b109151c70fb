"""Wilson intervals and the defect counts they imply."""

import pytest

from cpst_pipeline.cascade.calibration import recall_evidence_shortfall
from cpst_pipeline.evaluation.intervals import trials_needed, wilson_interval
from cpst_pipeline.evaluation.metrics import classification_metrics


@pytest.mark.parametrize(
    "successes, trials, low, high",
    [(5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (0, 10, 0.0, 0.2775), (74, 78, 0.8754, 0.9799)],
)
def test_wilson_matches_published_values(successes, trials, low, high):
    interval = wilson_interval(successes, trials)
    assert interval.low == pytest.approx(low, abs=1e-4) and interval.high == pytest.approx(high, abs=1e-4)


def test_wilson_without_trials_is_undefined_and_bad_counts_raise():
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_trials_needed_is_the_first_count_whose_perfect_score_supports_the_target():
    needed = trials_needed(0.95)
    assert needed == 73
    assert wilson_interval(needed, needed).low >= 0.95 > wilson_interval(needed - 1, needed - 1).low


def test_classification_metrics_carry_intervals():
    m = classification_metrics([0, 0, 0, 1, 1], [0.1, 0.2, 0.7, 0.8, 0.3], [0, 0, 1, 1, 0])
    assert m["recall_ci"] == pytest.approx(wilson_interval(1, 2).as_list())
    assert m["false_positive_rate_ci"] == pytest.approx(wilson_interval(1, 3).as_list())
    assert classification_metrics([0, 0], [0.1, 0.2], [0, 0])["recall_ci"] is None


def test_evidence_shortfall_names_the_count_needed():
    ten_found = {"n_anomaly": 10, "recall": 1.0, "recall_ci": wilson_interval(10, 10).as_list()}
    message = recall_evidence_shortfall(ten_found, 0.95)
    assert "10 calibration defects" in message and "73 defects" in message
    many = {"n_anomaly": 200, "recall": 0.99, "recall_ci": wilson_interval(198, 200).as_list()}
    assert recall_evidence_shortfall(many, 0.95) is None
    assert "no defects" in recall_evidence_shortfall({"n_anomaly": 0, "recall": None, "recall_ci": None}, 0.95)
