"""Expected calibration error and reliability-diagram data."""

from __future__ import annotations

import numpy as np
import pytest

from aegis.evaluate.calibration import calibration, calibration_from_probs


def test_perfectly_calibrated_predictions_have_ece_near_zero():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.1, 1.0, 100_000)
    correct = rng.random(100_000) < confidence  # right exactly as often as claimed
    report = calibration(confidence, correct, bins=15)
    assert report.ece < 0.01


def test_over_confident_predictions_have_large_ece():
    rng = np.random.default_rng(1)
    confidence = rng.uniform(0.95, 1.0, 10_000)
    correct = rng.random(10_000) < 0.6
    report = calibration(confidence, correct, bins=15)
    assert report.ece == pytest.approx(0.975 - 0.6, abs=0.02)


def test_reliability_bins():
    confidence = np.array([0.0, 0.1, 0.5, 0.5, 1.0])
    correct = np.array([False, True, True, False, True])
    report = calibration(confidence, correct, bins=4)
    assert report.edges == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert report.count == [2, 2, 0, 1]  # right-closed bins, 0 in the first
    assert report.confidence == [pytest.approx(0.05), 0.5, None, 1.0]
    assert report.accuracy == [0.5, 0.5, None, 1.0]
    assert report.ece == pytest.approx((2 * 0.45 + 0 + 0) / 5)
    assert report.to_dict()["count"] == report.count


def test_from_probabilities():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    labels = np.array([0, 0, 1])
    report = calibration_from_probs(probs, labels, bins=10)
    assert sum(report.count) == 3
    assert report.ece == pytest.approx((0.1 + 0.8 + 0.6) / 3)


@pytest.mark.parametrize(
    ("confidence", "correct", "bins"),
    [([], [], 10), ([0.5], [True, False], 10), ([1.5], [True], 10), ([0.5], [True], 0)],
)
def test_bad_inputs_are_refused(confidence, correct, bins):
    with pytest.raises(ValueError):
        calibration(np.array(confidence), np.array(correct), bins=bins)
