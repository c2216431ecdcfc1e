"""The monitor's statistics: exact KS, calibrated thresholds, refused malformed references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from aegis.evaluate.monitoring import (
    MonitorReference,
    breaches,
    calibrate_monitor,
    chi2,
    chi2_two_sample,
    ks_max,
    latency_surprise,
    signals,
    window_alpha,
)


def _probs(rng, n: int, classes: int = 5, shift: int | None = None) -> np.ndarray:
    labels = rng.integers(classes, size=n) if shift is None else np.full(n, shift)
    logits = rng.normal(0, 1, (n, classes))
    logits[np.arange(n), labels] += 3.0
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def test_ks_max_is_scipys_statistic_with_and_without_ties():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(80, 2))
    win = rng.normal(0.3, 1, size=(1, 30, 2))
    ref[:10, 1] = 0.0  # ties inside the reference and across the samples
    win[0, :5, 1] = 0.0
    expected = max(stats.ks_2samp(ref[:, j], win[0, :, j]).statistic for j in range(2))
    assert ks_max(np.sort(ref, axis=0), win)[0] == pytest.approx(expected)


def test_chi2_matches_scipy():
    share = np.array([0.5, 0.3, 0.2])
    labels = np.array([[0, 0, 1, 2, 2, 2, 1, 0, 0, 0]])
    expected = stats.chisquare(np.bincount(labels[0], minlength=3), share * 10).statistic
    assert chi2(share, labels)[0] == pytest.approx(expected)


def test_chi2_two_sample_is_scipys_test_of_homogeneity():
    ref = np.array([30, 0, 20, 10])  # a label the reference never gave
    labels = np.array([[0, 1, 1, 2, 3, 3, 3, 0, 0, 2], [0, 0, 0, 0, 2, 2, 2, 3, 0, 0]])
    for w in range(2):
        table = np.stack([ref, np.bincount(labels[w], minlength=4)])
        table = table[:, table.sum(axis=0) > 0]
        expected = stats.chi2_contingency(table, correction=False).statistic
        assert chi2_two_sample(ref, labels)[w] == pytest.approx(expected)


def test_thresholds_hold_their_false_alarm_rate_and_a_label_shift_breaches():
    rng = np.random.default_rng(1)
    record = calibrate_monitor(probs=_probs(rng, 400), ood=rng.normal(size=400), window=50,
                               alpha=0.05, boots=1000, seed=0)  # fmt: skip
    ref = MonitorReference.from_json(record)
    # latency_shift always: every log has latencies (its reference is the version's own)
    assert set(ref.thresholds) == {"softmax_ks", "label_chi2", "ood_count", "latency_shift"}
    clean = _probs(rng, 200 * 50).reshape(200, 50, -1)
    ood = rng.normal(size=(200, 50))
    hits = breaches(ref, signals(ref, clean, clean.argmax(axis=2), ood))
    assert np.any(np.stack(list(hits.values())), axis=0).mean() <= 0.1  # alpha 0.05, 200 windows
    shifted = _probs(rng, 50, shift=0)[None]
    far = np.full((1, 50), 10.0)  # every row beyond the reference's OOD maximum
    hit = breaches(ref, signals(ref, shifted, shifted.argmax(axis=2), far))
    assert hit["label_chi2"][0] and hit["ood_count"][0]


@pytest.mark.parametrize(
    "change",
    [{"window": 2}, {"alpha": 1.5}, {"thresholds": {"made_up": 1.0}},
     {"label_share": [0.0, 1.0]}, {"ood_cut": float("nan")}, {"columns": [[1.0]]}],
)  # fmt: skip
def test_a_malformed_reference_is_refused(change):
    rng = np.random.default_rng(2)
    record = calibrate_monitor(probs=_probs(rng, 60, classes=2), window=20, boots=500)
    MonitorReference.from_json(record)  # the unchanged one loads
    with pytest.raises(ValueError, match="malformed monitor reference"):
        MonitorReference.from_json(record | change)


def test_the_window_alpha_comes_from_the_daily_budget():
    assert window_alpha(false_alarms_per_day=0.1, windows_per_day=1000, confirm=2) == (
        pytest.approx(0.01)
    )
    with pytest.raises(ValueError):
        window_alpha(false_alarms_per_day=0, windows_per_day=1000, confirm=2)


def test_feedback_accuracy_holds_its_false_alarm_rate_and_catches_a_fall_in_accuracy():
    rng = np.random.default_rng(3)
    probs = _probs(rng, 400)
    correct = rng.random(400) > 0.05  # 5 % errors on the reference
    record = calibrate_monitor(probs=probs, correct=correct, window=50, alpha=0.04, boots=500)
    ref = MonitorReference.from_json(record)
    assert record["feedback"] == {"errors": int((~correct).sum()), "rows": 400}
    per_signal = record["calibrated_on"]["alpha_per_signal"]
    assert per_signal == pytest.approx(0.04 / 4)  # four signals share the budget (+ latency)
    windows = _probs(rng, 2000 * 50).reshape(2000, 50, -1)
    labels = windows.argmax(axis=2)
    same = np.where(rng.random((2000, 50)) > 0.05, labels, (labels + 1) % 5)  # 5 % wrong
    false_alarms = breaches(ref, signals(ref, windows, labels, None, same))["feedback_accuracy"]
    assert false_alarms.mean() <= per_signal * 1.5  # conservative: at most alpha_s
    worse = np.where(rng.random((2000, 50)) > 0.25, labels, (labels + 1) % 5)  # 25 % wrong
    assert (
        breaches(ref, signals(ref, windows, labels, None, worse))["feedback_accuracy"].mean() > 0.9
    )
    unlabelled = np.full((2000, 50), -1)
    assert "feedback_accuracy" not in signals(ref, windows, labels, None, unlabelled)
    with pytest.raises(ValueError, match="feedback"):
        MonitorReference.from_json(record | {"feedback": {"errors": 5, "rows": 2}})


def test_adversarial_count_is_thresholded_on_the_detectors_own_clean_rate():
    rng = np.random.default_rng(4)
    probs = _probs(rng, 400)
    record = calibrate_monitor(probs=probs, flags=(20, 400), window=50, alpha=0.03, boots=500)
    ref = MonitorReference.from_json(record)
    assert ref.flags == (20, 400) and record["flags"] == {"flagged": 20, "rows": 400}
    per_signal = record["calibrated_on"]["alpha_per_signal"]
    windows = _probs(rng, 4000 * 50).reshape(4000, 50, -1)
    labels = windows.argmax(axis=2)
    clean = rng.random((4000, 50)) < 0.05  # the detector's clean rate
    hits = breaches(ref, signals(ref, windows, labels, None, None, clean))["adversarial_count"]
    assert hits.mean() <= per_signal * 1.5
    attacked = rng.random((4000, 50)) < 0.3  # 30 % of the rows flagged
    assert (
        breaches(ref, signals(ref, windows, labels, None, None, attacked))[
            "adversarial_count"
        ].mean()
        > 0.95
    )
    assert "adversarial_count" not in signals(ref, windows, labels, None)  # unscored rows
    with pytest.raises(ValueError, match="flags"):
        MonitorReference.from_json(record | {"flags": {"flagged": 9, "rows": 3}})


def test_the_permutation_null_holds_softmax_ks_at_its_rate_on_a_small_reference():
    # the two-sample bootstrap it replaced alarmed at 1.5x its rate here (shared rows)
    rng = np.random.default_rng(5)
    rates = []
    for seed in range(3):
        record = calibrate_monitor(probs=_probs(rng, 180), window=50, alpha=0.04, boots=2000,
                                   seed=seed)  # fmt: skip
        assert record["calibrated_on"]["null"] == "permutation"
        ref = MonitorReference.from_json(record)
        windows = _probs(rng, 1000 * 50).reshape(1000, 50, -1)
        hits = breaches(ref, signals(ref, windows, windows.argmax(axis=2), None))
        rates.append(hits["softmax_ks"].mean())
    per_signal = record["calibrated_on"]["alpha_per_signal"]
    assert np.mean(rates) <= 1.5 * per_signal  # 3,000 windows: 1 % measured to about +-0.2 %
    with pytest.raises(ValueError, match="at least 70"):
        calibrate_monitor(probs=_probs(rng, 69), window=50)


def test_latency_shift_ranks_a_windows_requests_against_the_versions_history():
    rng = np.random.default_rng(6)
    before = rng.gamma(4.0, 2.0, size=1000)
    same = [latency_surprise(before, rng.gamma(4.0, 2.0, size=20)) for _ in range(2000)]
    threshold = -np.log10(0.01)
    assert np.mean(np.array(same) > threshold) <= 0.015  # a steady load: the rank test's rate
    assert latency_surprise(before, rng.gamma(4.0, 2.0, size=20) * 2) > threshold
    assert latency_surprise(before[:10], before[:20]) == 0.0  # too little history: no signal
    assert latency_surprise(before, before[:3]) == 0.0  # too few requests in the window


def test_extraction_count_breaches_on_one_row_from_a_flagged_key():
    rng = np.random.default_rng(7)
    record = calibrate_monitor(probs=_probs(rng, 200), window=50, boots=500, extraction=True)
    ref = MonitorReference.from_json(record)
    assert ref.thresholds["extraction_count"] == 0.0
    per_signal = record["calibrated_on"]["alpha_per_signal"]
    assert per_signal == pytest.approx(record["alpha"] / 3)  # it takes no share of alpha
    windows = _probs(rng, 2 * 50).reshape(2, 50, -1)
    extracting = np.zeros((2, 50), dtype=bool)
    extracting[1, 7] = True
    values = signals(ref, windows, windows.argmax(axis=2), None, extracting=extracting)
    assert breaches(ref, values)["extraction_count"].tolist() == [False, True]
    plain = MonitorReference.from_json(calibrate_monitor(probs=_probs(rng, 200), boots=500))
    assert "extraction_count" not in signals(plain, windows, windows.argmax(2), None,
                                             extracting=extracting)  # fmt: skip
