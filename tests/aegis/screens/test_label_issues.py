"""label-issue: flipped labels found on real data, clean data left alone, odd tables survived."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from aegis.attack.poison import poison
from aegis.screens.label_issues import NAME, label_issue_screen


def _precision_recall(flagged, truth) -> tuple[float, float]:
    hits = len(set(flagged.tolist()) & set(truth))
    return hits / max(len(flagged), 1), hits / len(truth)


@pytest.fixture(scope="module")
def flipped(digits):
    attacked = poison(digits, kind="flip", rate=0.05, seed=7)
    return attacked, label_issue_screen(attacked.frame, seed=7)


def test_random_flips_on_digits_are_found_with_high_precision(flipped):
    attacked, result = flipped
    precision, recall = _precision_recall(result.flagged, attacked.rows)
    assert precision >= 0.85 and recall >= 0.7, (precision, recall)
    assert result.details["flagged"] == len(result.flagged)


def test_the_result_is_ordered_and_consistent(flipped, digits):
    _, result = flipped
    assert result.name == NAME == "label-issue"
    assert result.flagged.dtype == np.int64 and np.all(np.diff(result.flagged) > 0)
    assert result.scores.shape == (len(digits),) and np.isfinite(result.scores).all()
    above = np.flatnonzero(result.scores > result.threshold)
    assert np.array_equal(above, result.flagged)  # the threshold decides, nothing else
    top = np.argsort(-result.scores)[: len(result.flagged)]
    assert set(top.tolist()) == set(result.flagged.tolist())  # higher is more suspicious
    assert sum(c["rows"] for c in result.per_class.values()) == len(digits)
    assert sum(c["flagged"] for c in result.per_class.values()) == len(result.flagged)
    json.dumps(result.details)
    json.dumps(result.per_class)
    assert result.details["folds_used"] == 5 and result.details["scaling"].startswith("image")


def test_clean_digits_are_left_alone(digits):
    result = label_issue_screen(digits)
    assert len(result.flagged) <= 0.02 * len(digits)
    assert "skipped" not in result.details


def test_refits_recover_a_pair_flip(digits):
    attacked = poison(digits, kind="pair", rate=0.5, source=1, target=7, seed=3)
    result = label_issue_screen(attacked.frame, seed=3)
    precision, recall = _precision_recall(result.flagged, attacked.rows)
    assert precision >= 0.7 and recall >= 0.4, (precision, recall)
    fits = result.details["fits"]
    assert len(fits) > 1 and fits[-1]["above_threshold"] > fits[0]["above_threshold"]
    looks_like = result.per_class[7]["flagged_look_like"]
    assert looks_like.get(1, 0) >= 0.8 * sum(looks_like.values())  # the 7s there look like 1s


def test_a_table_of_features_is_standardised_and_screened(cancer):
    attacked = poison(cancer, kind="flip", rate=0.05, seed=1)
    result = label_issue_screen(attacked.frame, seed=1)
    precision, recall = _precision_recall(result.flagged, attacked.rows)
    assert precision >= 0.7 and recall >= 0.7, (precision, recall)
    assert result.details["scaling"] == "standardised"
    again = label_issue_screen(attacked.frame, seed=1)
    assert np.array_equal(again.flagged, result.flagged)
    assert np.array_equal(again.scores, result.scores)


def test_a_rare_unlearnable_class_does_not_claim_the_table(digits):
    part = digits.iloc[:300].copy()
    part.loc[:4, "label"] = 99  # five digits under a label no other row has
    result = label_issue_screen(part)
    assert len(result.flagged) <= 10
    assert result.per_class[99]["rows"] == 5


def test_random_labels_flag_nothing_and_say_why():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(300, 5)), columns=[f"f{i}" for i in range(5)])
    frame["label"] = rng.integers(0, 3, 300)
    result = label_issue_screen(frame)
    assert len(result.flagged) == 0 and "hardly predict" in result.details["skipped"]


@pytest.mark.parametrize("rows", [0, 1, 5, 19])
def test_a_tiny_table_is_not_screened(rows):
    frame = pd.DataFrame({"a": np.arange(rows, dtype=float), "label": np.arange(rows) % 2})
    result = label_issue_screen(frame)
    assert len(result.flagged) == 0 and result.scores.shape == (rows,)
    assert "too few" in result.details["skipped"]


def test_one_class_is_not_screened():
    frame = pd.DataFrame({"a": np.arange(50, dtype=float), "label": 3})
    result = label_issue_screen(frame)
    assert len(result.flagged) == 0 and "1 class" in result.details["skipped"]


def test_small_classes_lower_the_folds_and_a_single_row_is_left_out():
    rng = np.random.default_rng(1)
    labels = np.array([0] * 30 + [1] * 30 + [2] * 3 + [3])
    x = rng.normal(size=(len(labels), 2)) + labels[:, None] * 3.0  # separable classes
    frame = pd.DataFrame(x, columns=["a", "b"]).assign(label=labels)
    frame.loc[5, "a"] = np.nan  # a stray missing value is filled, not fatal
    result = label_issue_screen(frame)
    assert result.details["folds_used"] == 3 and result.details["screened_rows"] == 63
    assert result.details["non_finite_filled"] == 1
    assert "single row" in result.per_class[3]["skipped"]
    assert 63 not in result.flagged.tolist()
    assert len(result.flagged) <= 3


@pytest.mark.parametrize(
    "settings",
    [
        {"folds": 1},
        {"folds": 2.5},
        {"knn": 0},
        {"threshold": 0},
        {"threshold": float("nan")},
        {"drop_threshold": -0.1},
        {"refits": -1},
        {"seed": -1},
        {"min_rows": True},
        {"min_gain": 1.0},
        {"threshold": "high"},
    ],
)
def test_bad_settings_are_refused(settings):
    frame = pd.DataFrame({"a": np.arange(40, dtype=float), "label": np.arange(40) % 2})
    with pytest.raises(ValueError, match="label-issue"):
        label_issue_screen(frame, **settings)


def test_a_table_without_labels_or_numbers_is_refused():
    with pytest.raises(ValueError, match="'label' column"):
        label_issue_screen(pd.DataFrame({"a": [1.0, 2.0]}))
    frame = pd.DataFrame({"a": ["x"] * 30, "label": [0, 1] * 15})
    with pytest.raises(ValueError, match="numeric"):
        label_issue_screen(frame)
