"""The attack simulator: each kind poisons what it says, reproducibly, and nothing else."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits

from aegis.attack.poison import apply_trigger, poison
from aegis.errors import UsageError


def _frame(loader):
    frame = loader(as_frame=True).frame.rename(columns={"target": "label"})
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame["label"] = frame["label"].astype("int64")
    return frame


@pytest.fixture(scope="module")
def digits():
    return _frame(load_digits)


@pytest.fixture(scope="module")
def cancer():
    return _frame(load_breast_cancer)


def _changed_rows(before, after) -> set[int]:
    same = (before.to_numpy() == after.iloc[: len(before)].to_numpy()).all(axis=1)
    return set(np.flatnonzero(~same).tolist())


@pytest.mark.parametrize("kind", ["flip", "boundary"])
def test_label_attacks_change_exactly_the_truth_rows_labels(digits, kind):
    result = poison(digits, kind=kind, rate=0.05, seed=1)
    assert len(result.rows) == 90 and result.rows == sorted(result.rows)
    assert _changed_rows(digits, result.frame) == set(result.rows)
    changed = result.frame.loc[result.rows, "label"].to_numpy()
    assert np.all(changed != digits.loc[result.rows, "label"].to_numpy())
    assert result.labels == {r: int(digits.loc[r, "label"]) for r in result.rows}
    again = poison(digits, kind=kind, rate=0.05, seed=1)
    assert again.rows == result.rows and again.frame.equals(result.frame)


def test_pair_relabels_a_share_of_one_class_as_another(digits):
    result = poison(digits, kind="pair", rate=0.5, seed=0, source=1, target=7)
    assert len(result.rows) == round(0.5 * (digits["label"] == 1).sum())
    assert set(digits.loc[result.rows, "label"]) == {1}
    assert set(result.frame.loc[result.rows, "label"]) == {7}


@pytest.mark.parametrize("fixture", ["digits", "cancer"])
def test_badnets_sets_the_trigger_and_the_target_on_other_classes(request, fixture):
    frame = request.getfixturevalue(fixture)
    result = poison(frame, kind="badnets", rate=0.05, seed=2, target=0)
    trigger = result.details["trigger"]
    assert _changed_rows(frame, result.frame) == set(result.rows)
    assert set(result.frame.loc[result.rows, "label"]) == {0}
    assert 0 not in set(frame.loc[result.rows, "label"])
    carried = apply_trigger(frame, trigger, result.rows)
    assert carried.drop(columns="label").equals(result.frame.drop(columns="label"))
    if fixture == "digits":
        assert trigger["columns"] == ["pixel_6_6", "pixel_6_7", "pixel_7_6", "pixel_7_7"]


def test_clean_label_keeps_every_label(digits):
    result = poison(digits, kind="clean-label", rate=0.05, seed=0, target=3)
    assert result.frame["label"].equals(digits["label"])
    assert set(digits.loc[result.rows, "label"]) == {3}


def test_ood_appends_rows_with_the_same_schema(digits):
    result = poison(digits, kind="ood", rate=0.05, seed=0)
    assert len(result.frame) == len(digits) + 90
    assert result.rows == list(range(len(digits), len(digits) + 90))
    assert result.frame.dtypes.equals(digits.dtypes)
    assert result.frame.iloc[: len(digits)].equals(digits)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"kind": "nope", "rate": 0.1}, "--kind"),
        ({"kind": "flip", "rate": 0.0}, "--rate"),
        ({"kind": "flip", "rate": float("nan")}, "--rate"),
        ({"kind": "flip", "rate": 1e-6}, "poisons no row"),
        ({"kind": "pair", "rate": 0.5, "source": 1}, "--to"),
        ({"kind": "pair", "rate": 0.5, "source": 1, "target": 1}, "same class"),
        ({"kind": "pair", "rate": 0.5, "source": 11, "target": 1}, "not a class"),
        ({"kind": "clean-label", "rate": 0.5, "target": 1}, "can carry"),
    ],
)
def test_bad_settings_are_usage_errors(digits, kw, message):
    with pytest.raises(UsageError, match=message):
        poison(digits, **kw)
