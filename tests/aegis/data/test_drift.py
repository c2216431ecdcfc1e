"""Profiles and PSI on the demo datasets: resamples stay quiet, shifted copies do not."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from validation_helpers import bootstrap, sklearn_frame

from aegis.config import ValidateParams
from aegis.data.drift import profile_frame, psi_against

GATE = ValidateParams().max_psi  # the default gate, 0.25
EPS = 1e-4  # drift.py's smoothing of empty bins


def _profile(frame: pd.DataFrame, *, bins: int = 10, categorical_max_values: int = 20) -> dict:
    return profile_frame(frame, bins=bins, categorical_max_values=categorical_max_values)


@pytest.fixture(scope="module", params=["digits", "breast_cancer"])
def demo(request, tmp_path_factory) -> pd.DataFrame:
    return sklearn_frame(request.param, tmp_path_factory.mktemp(request.param))


def _features(frame: pd.DataFrame) -> list[str]:
    """Feature columns that vary (digits' pixel_0_0 is always 0)."""
    return [c for c in frame.columns if c != "label" and frame[c].std() > 0]


def test_gate_default_is_the_rule_of_thumb():
    assert GATE == 0.25


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bootstrap_resample_stays_well_under_the_gate(demo, seed):
    scores = psi_against(_profile(demo), bootstrap(demo, seed=seed))

    assert set(scores) == set(demo.columns)
    worst = max(scores, key=scores.get)
    assert scores[worst] < 0.1 < GATE, (worst, scores[worst])


def test_shifted_features_exceed_the_gate(demo):
    shifted = demo.copy()
    features = _features(demo)
    shifted[features] = shifted[features] + shifted[features].std()  # one standard deviation

    scores = psi_against(_profile(demo), shifted)

    over = [c for c in features if scores[c] > GATE]
    assert over == features, {c: scores[c] for c in features if c not in over}
    assert scores["label"] == pytest.approx(0.0, abs=1e-9)  # labels untouched


def test_skewed_label_distribution_exceeds_the_gate(demo):
    keep = demo["label"] < demo["label"].max()  # one class dropped entirely
    scores = psi_against(_profile(demo), demo[keep])
    assert scores["label"] > GATE


def test_identical_frame_has_zero_psi(demo):
    scores = psi_against(_profile(demo), demo)
    assert max(scores.values()) == pytest.approx(0.0, abs=1e-9)


def test_profile_is_json_and_round_trips(demo):
    profile = _profile(demo)
    again = json.loads(json.dumps(profile, sort_keys=True))
    assert again == profile
    assert profile["rows"] == len(demo)
    assert psi_against(again, demo) == psi_against(profile, demo)


def test_numeric_vs_categorical_is_chosen_by_categorical_max_values():
    frame = pd.DataFrame(
        {
            "twenty": np.arange(200, dtype="float64") % 20,  # exactly 20 distinct values
            "twentyone": np.arange(200, dtype="float64") % 21,
            "names": [f"name-{i}" for i in range(200)],  # many distinct, not numbers
            "flag": [True, False] * 100,
        }
    )

    columns = _profile(frame, bins=5, categorical_max_values=20)["columns"]

    assert columns["twenty"]["kind"] == "categorical"
    assert len(columns["twenty"]["values"]) == 20
    assert sum(columns["twenty"]["shares"]) == pytest.approx(1.0)
    assert columns["twentyone"]["kind"] == "numeric"
    assert len(columns["twentyone"]["edges"]) <= 4  # 5 quantile bins: at most 4 inner edges
    assert len(columns["twentyone"]["shares"]) == len(columns["twentyone"]["edges"]) + 1
    assert columns["names"]["kind"] == "categorical"  # strings are never binned by quantile
    assert columns["flag"]["kind"] == "categorical"
    assert columns["flag"]["values"] == ["False", "True"]

    wider = _profile(frame, bins=5, categorical_max_values=21)["columns"]
    assert wider["twentyone"]["kind"] == "categorical"


def test_unseen_categories_are_counted():
    ref = pd.DataFrame({"c": ["a", "b"] * 50})
    new = pd.DataFrame({"c": ["a", "z"] * 50})  # half the rows are a value never seen

    (psi,) = psi_against(_profile(ref), new).values()

    # bins a, b and "unseen": b is empty now, unseen holds half the rows
    expected = 2 * (0.5 - EPS) * math.log(0.5 / EPS)
    assert psi == pytest.approx(expected, rel=1e-4)
    assert psi > GATE


def test_new_values_outside_numeric_range_land_in_the_outer_bins():
    ref = pd.DataFrame({"x": np.linspace(0.0, 1.0, 1000)})
    profile = _profile(ref)
    new = pd.DataFrame({"x": np.full(1000, 5.0)})  # all above the last edge
    assert psi_against(profile, new)["x"] > GATE
    assert psi_against(profile, ref)["x"] == pytest.approx(0.0, abs=1e-9)


def test_integer_and_float_encodings_of_the_same_values_do_not_drift(tmp_path):
    """The suite accepts pixels as int64 or float64; a type switch alone is not a shift."""
    digits = sklearn_frame("digits", tmp_path)
    as_ints = digits.astype({c: "int64" for c in digits.columns if c != "label"})
    scores = psi_against(_profile(digits), as_ints)
    assert max(scores.values()) == pytest.approx(0.0, abs=1e-9)


def test_columns_missing_on_either_side_are_skipped():
    ref = pd.DataFrame({"a": [1, 2, 3] * 10, "b": [1, 2, 3] * 10})
    new = pd.DataFrame({"a": [1, 2, 3] * 10, "c": [1.0] * 30})
    assert set(psi_against(_profile(ref), new)) == {"a"}


def test_numeric_profile_against_strings_is_skipped_not_a_crash():
    ref = pd.DataFrame({"x": np.linspace(0.0, 1.0, 100)})
    new = pd.DataFrame({"x": [f"v{i}" for i in range(100)]})
    assert psi_against(_profile(ref), new) == {}


def test_nulls_are_ignored():
    ref = pd.DataFrame({"x": np.linspace(0.0, 1.0, 100)})
    new = ref.copy()
    new.loc[::10, "x"] = np.nan
    profile = _profile(ref)
    assert profile["columns"]["x"]["kind"] == "numeric"
    assert psi_against(profile, new)["x"] < 0.1
