"""backdoor: BadNets rows found on real data, clean data left alone, odd tables survived."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from aegis.attack.poison import poison
from aegis.screens.backdoor import NAME, backdoor_screen


def _rates(result, truth, n) -> tuple[float, float]:
    hit = np.zeros(n, dtype=bool)
    hit[result.flagged] = True
    poisoned = np.zeros(n, dtype=bool)
    poisoned[truth] = True
    return float(hit[poisoned].mean()), float(hit[~poisoned].mean())


@pytest.fixture(scope="module")
def badnets(digits):
    attacked = poison(digits, kind="badnets", rate=0.05, seed=7, target=0)
    return attacked, backdoor_screen(attacked.frame, seed=7)


def test_badnets_rows_on_digits_are_found_with_few_false_positives(badnets):
    attacked, result = badnets
    tpr, fpr = _rates(result, attacked.rows, len(attacked.frame))
    assert tpr >= 0.8 and fpr <= 0.02, (tpr, fpr)
    assert result.details["poisoned_classes"] == [0]  # the target, and only it
    trigger = set(attacked.details["trigger"]["columns"])
    assert set(list(result.per_class[0]["shift"])[:4]) == trigger  # the shift is the patch


def test_the_result_is_consistent_and_json_able(badnets, digits):
    _, result = badnets
    assert result.name == NAME == "backdoor" and result.threshold is None
    assert result.flagged.dtype == np.int64 and np.all(np.diff(result.flagged) > 0)
    assert result.scores.shape == (len(digits),) and np.isfinite(result.scores).all()
    assert sum(c["rows"] for c in result.per_class.values()) == len(digits)
    assert sum(c["flagged"] for c in result.per_class.values()) == len(result.flagged)
    for c, entry in result.per_class.items():
        assert entry["decision"] in ("poisoned", "no poison here", "no cluster of a plausible size")
        assert "control" in entry or entry["decision"] != "poisoned"
        if entry["decision"] != "poisoned":
            assert entry["flagged"] == 0, c  # a class can say "no poison here"
    json.dumps({"per_class": result.per_class, "details": result.details})


def test_clean_digits_are_left_alone(digits):
    result = backdoor_screen(digits, seed=7)
    assert len(result.flagged) <= 0.01 * len(digits), result.per_class
    assert result.details["poisoned_classes"] == []


def test_a_table_gets_the_mlp_and_its_trigger_is_found(cancer):
    attacked = poison(cancer, kind="badnets", rate=0.05, seed=7, target=0)
    result = backdoor_screen(attacked.frame, seed=7)
    assert result.details["kind"] == "tabular"
    tpr, fpr = _rates(result, attacked.rows, len(attacked.frame))
    assert tpr >= 0.7 and fpr <= 0.05, (tpr, fpr)


def test_same_seed_same_verdict(cancer):
    attacked = poison(cancer, kind="badnets", rate=0.05, seed=3, target=0)
    first = backdoor_screen(attacked.frame, seed=3)
    second = backdoor_screen(attacked.frame, seed=3)
    assert np.array_equal(first.flagged, second.flagged)
    assert np.array_equal(first.scores, second.scores)


@pytest.mark.parametrize(
    "setting",
    [
        {"epochs": 0},
        {"dims": 2.5},
        {"max_share": 0.7},
        {"max_share": 0},
        {"min_transfer": 1.5},
        {"min_match": -0.1},
        {"neighbours": True},
        {"outlier_z": float("nan")},
        {"seed": -1},
        {"min_rows": 2},
    ],
)
def test_bad_settings_are_refused(cancer, setting):
    with pytest.raises(ValueError, match=next(iter(setting))):
        backdoor_screen(cancer, **setting)


def test_tiny_and_one_class_tables_are_skipped_not_crashed():
    rng = np.random.default_rng(0)
    tiny = pd.DataFrame({"a": rng.normal(size=8), "b": rng.normal(size=8), "label": [0, 1] * 4})
    result = backdoor_screen(tiny)
    assert "skipped" in result.details and len(result.flagged) == 0 and len(result.scores) == 8
    one = pd.DataFrame({"a": rng.normal(size=50), "label": np.zeros(50, dtype="int64")})
    assert "skipped" in backdoor_screen(one).details
    empty = tiny.iloc[:0]
    assert len(backdoor_screen(empty).scores) == 0


def test_a_class_with_few_rows_is_skipped_with_a_reason():
    rng = np.random.default_rng(1)
    labels = np.array([0] * 30 + [1] * 30 + [2] * 3, dtype="int64")
    frame = pd.DataFrame(rng.normal(size=(63, 4)) + 4.0 * labels[:, None], columns=list("abcd"))
    frame["label"] = labels
    result = backdoor_screen(frame, epochs=2)
    assert "min_rows" in result.per_class[2]["skipped"]
    assert result.per_class[2]["flagged"] == 0
    assert {0, 1} <= set(result.per_class) and len(result.scores) == 63


@pytest.mark.parametrize("rows", [60, 200])
def test_a_model_that_memorised_noise_is_not_called_backdoored(rows):
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(rng.normal(size=(rows, 5)), columns=[f"f{i}" for i in range(5)])
    frame["label"] = (np.arange(rows) % 2).astype("int64")  # nothing to learn
    result = backdoor_screen(frame, seed=5)
    assert result.details["poisoned_classes"] == [] and len(result.flagged) == 0
    assert "skipped" in result.details and result.details["knn_accuracy"] < 0.75
