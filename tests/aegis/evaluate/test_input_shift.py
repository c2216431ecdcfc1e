"""The monitor's input signal: bins as the log keeps inputs, PSI, and its permutation null."""

from __future__ import annotations

import numpy as np
import pytest

from aegis.evaluate.input_shift import InputBins, logged_features
from aegis.evaluate.monitoring import MonitorReference, breaches, calibrate_monitor, signals


def _rows(rng, n: int) -> np.ndarray:
    """Digit-like rows: 12 pixel features (17 values) and 4 continuous ones."""
    rows = rng.integers(0, 17, size=(n, 16)).astype(float)
    rows[:, :4] = np.round(rng.gamma(2.0, 2.0, size=(n, 4)), 3)
    return rows


def _probs(rng, n: int) -> np.ndarray:
    e = np.exp(rng.normal(size=(n, 4)) * 2)
    return e / e.sum(axis=1, keepdims=True)


def test_logged_features_are_what_each_log_mode_keeps():
    rows = np.array([[0.0, 4.0, 8.0], [1.0, 1.0, 1.0]])
    assert logged_features(rows, "full").tolist() == rows.tolist()
    assert logged_features(rows, "summary").tolist() == [[4.0, 0.0, 8.0], [1.0, 1.0, 1.0]]
    assert logged_features(rows, "none") is None


def test_bins_place_unseen_and_out_of_range_values_apart():
    rng = np.random.default_rng(0)
    features = np.column_stack([rng.integers(0, 3, 100), rng.normal(size=100)]).astype(float)
    bins = InputBins.fit(features, "full")
    assert bins.categorical == (True, False)
    assert bins.counts.sum(axis=1).tolist() == [100, 100]
    low, high = features[:, 1].min(), features[:, 1].max()
    index = bins.index(np.array([[7.0, high + 1], [1.0, low - 1], [2.0, low]]))
    assert index[0, 0] == 3  # a value the reference never took: its own bin
    assert index[0, 1] == len(bins.cuts[1])  # above the maximum: the top bin, empty
    assert index[1, 1] == 0 and bins.counts[1, 0] == 0  # below the minimum: the bottom bin
    assert index[2, 1] == 1  # the minimum itself is a reference value
    again = InputBins.from_json(bins.to_json())
    assert all(np.array_equal(a, b) for a, b in zip(again.cuts, bins.cuts, strict=True))
    assert np.array_equal(again.index(features), bins.index(features))  # exact round trip


@pytest.mark.parametrize(
    "change",
    [{"mode": "none"}, {"cuts": [[2.0, 1.0], [0.0]]}, {"cuts": [[float("nan")], [0.0]]},
     {"categorical": [1, 0]}, {"counts": [[1.0]]}, {"counts": "x"}],
)  # fmt: skip
def test_malformed_bins_are_refused(change):
    bins = InputBins.fit(np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]]), "full").to_json()
    InputBins.from_json(bins)
    with pytest.raises(ValueError, match="malformed input bins"):
        InputBins.from_json(bins | change)


def test_split_counts_bin_a_window_as_against_a_reference_of_the_rest():
    features = np.array([[0.0, 1.0], [1.0, 2.0], [1.0, 3.0], [2.0, 4.0], [0.0, 5.0]])
    bins = InputBins.fit(features, "full")
    wins = np.array([[3, 4]])  # the window holds the only 2 and the largest value
    member = np.zeros((1, 5), dtype=bool)
    member[0, wins[0]] = True
    window, rest = bins.split_counts(features, bins.index(features), member, wins)
    assert rest.sum(axis=2).tolist() == [[3, 3]]
    assert window[0, 0, len(bins.cuts[0])] == 1  # 2 is unseen by the rest
    assert window[0, 1, len(bins.cuts[1])] == 2  # 4 and 5 are above the rest's maximum


@pytest.mark.parametrize("mode", ["summary", "full"])
def test_input_psi_holds_its_false_alarm_rate_and_catches_rows_beyond_the_reference(mode):
    rng = np.random.default_rng(1)
    m, n, w = 400, 50, 1500
    features = logged_features(_rows(rng, m), mode)
    bins = InputBins.fit(features, mode)
    record = calibrate_monitor(probs=_probs(rng, m), inputs=bins, features=features,
                               window=n, alpha=0.05, boots=2000, seed=1)  # fmt: skip
    ref = MonitorReference.from_json(record)
    assert ref.inputs is not None and ref.inputs.mode == mode
    per_signal = record["calibrated_on"]["alpha_per_signal"]
    probs = _probs(rng, w * n).reshape(w, n, -1)
    clean = logged_features(_rows(rng, w * n), mode).reshape(w, n, -1)
    hits = breaches(ref, signals(ref, probs, probs.argmax(2), None, inputs=clean))["input_psi"]
    assert hits.mean() <= 3 * per_signal  # 1,500 windows: a rate of 1.25 % measured to +-0.3 %
    shifted = _rows(rng, w * n).reshape(w, n, -1)
    shifted[:, :10, :4] += 30  # a fifth of each window's continuous features far out
    values = signals(
        ref,
        probs,
        probs.argmax(2),
        None,
        inputs=logged_features(shifted.reshape(w * n, -1), mode).reshape(w, n, -1),
    )
    assert breaches(ref, values)["input_psi"].mean() > 0.9  # fmt: skip
    assert "input_psi" not in signals(ref, probs, probs.argmax(2), None)  # nothing logged
