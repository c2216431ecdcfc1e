"""The served model: its signed policy, its input domain, the output policy."""

from __future__ import annotations

import numpy as np
import pytest
from serve_helpers import MODEL

from aegis.config import override_params
from aegis.ledger import Ledger
from aegis.registry.targets import Target
from aegis.serve.served import InputError, Prediction, input_domain, load_served
from aegis.train.data import DataSpec


def _served(served):
    return load_served(Ledger.load(served.env.ws), Target(model=MODEL, stage="prod"))


def test_the_policy_is_the_releases_signed_params_not_the_workspaces(served):
    override_params(served.env.ws.params_path, {"serve": {"output": "probs", "max_batch": 2}})
    model = _served(served)
    assert model.params.output == "label" and model.params.max_batch == 256


def test_the_detector_comes_from_signed_metrics(served):
    model = _served(served)
    assert model.detector is not None and model.describe()["detector"] is True
    assert model.detector.threshold == model.release.metrics["detector"]["threshold"]


@pytest.mark.parametrize("output", ["label", "topk", "probs"])
def test_output_policy(served, output):
    model = _served(served)
    params = model.params.model_copy(update={"output": output, "round": 1, "topk": 2})
    from dataclasses import replace

    model = replace(model, params=params)
    probs = np.array([[0.06, 0.9, 0.04], [0.5, 0.2, 0.3]], dtype=np.float32)
    out = model.shape_output(Prediction(probs.argmax(1), probs, None, np.zeros(2, bool)))
    assert out["labels"] == [1, 0]
    if output == "label":
        assert "probs" not in out and "topk" not in out
    elif output == "topk":
        assert out["topk"][0] == [{"label": 1, "p": 0.9}, {"label": 0, "p": 0.1}]
    else:
        assert out["probs"][1] == [0.5, 0.2, 0.3]


def test_rows_outside_the_domain_are_refused_naming_the_feature(served):
    model = _served(served)
    rows = np.zeros((2, 64))
    rows[1, 5] = 40.0
    with pytest.raises(InputError, match=r"inputs\[1\]\[5\] \(pixel_0_5"):
        model.check_rows(rows)
    rows[1, 5] = np.nan
    with pytest.raises(InputError, match="not a finite number"):
        model.check_rows(rows)


def _table_spec(**bounds) -> DataSpec:
    return DataSpec(
        kind="tabular", feature_columns=("a", "b"), classes=2, mean=(0.0, 5.0), std=(1.0, 2.0),
        **bounds,
    )  # fmt: skip


def test_table_domain_is_the_training_range_widened():
    low, high = input_domain(_table_spec(low=(-1.0, 3.0), high=(1.0, 3.0)), 0.5)
    assert low.tolist() == [-2.0, 2.0]  # a constant feature widens by its std
    assert high.tolist() == [2.0, 4.0]


def test_a_checkpoint_without_the_range_falls_back_to_ten_std():
    low, high = input_domain(_table_spec(), 0.1)
    assert low.tolist() == [-10.0, -15.0] and high.tolist() == [10.0, 25.0]
    spec = _table_spec(low=(0.0, 1.0), high=(1.0, 2.0))
    assert DataSpec.from_json(spec.to_json()) == spec
    assert "low" not in _table_spec().to_json()  # older digests unchanged
    with pytest.raises(ValueError):
        DataSpec.from_json({**spec.to_json(), "low": [2.0, 1.0]})  # low above high
