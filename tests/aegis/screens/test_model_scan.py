"""Model scan: a backdoored pipeline model is flagged with its target, a clean one is not."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_digits

from aegis.attack.poison import poison
from aegis.config import TrainParams
from aegis.screens.model_scan import ModelScan, scan_model
from aegis.train.data import prepare, to_tensors
from aegis.train.trainer import train_model


@pytest.fixture(scope="module")
def digits():
    frame = load_digits(as_frame=True).frame.rename(columns={"target": "label"})
    frame["label"] = frame["label"].astype("int64")
    return frame


def _trained(frame, clean_frame, seed: int):
    """The pipeline's default model (PGD training) and the clean test rows of its split."""
    params = TrainParams(seed=seed, threads=1)
    prepared = prepare(frame, params)
    model = train_model(prepared, params, progress=lambda _: None).model
    _, spec, split = prepared
    return model, *to_tensors(clean_frame, split.test, spec)


@pytest.fixture(scope="module")
def backdoored(digits):
    attacked = poison(digits, kind="badnets", rate=0.05, seed=7, target=0)
    return _trained(attacked.frame, digits, seed=7)


@pytest.fixture(scope="module")
def clean(digits):
    return _trained(digits, digits, seed=7)


def test_a_backdoored_model_is_flagged_with_its_target(backdoored):
    model, x, y = backdoored
    result = scan_model(model, x, y, domain=(0.0, 1.0), seed=7)
    assert isinstance(result, ModelScan)
    assert result.flagged and result.target == 0, result
    assert result.score >= result.threshold and result.details["rule"] == "ratio+mad"
    assert result.details["anomaly_index"] > result.details["min_anomaly"]
    norms = result.details["norms"]
    assert norms[0] < 0.6 * min(norms[1:])  # the trigger's mask is far smaller
    json.dumps(result.details)


def test_a_clean_model_is_not_flagged(clean):
    model, x, y = clean
    result = scan_model(model, x, y, domain=(0.0, 1.0), seed=7)
    assert not result.flagged and result.target is None, result
    assert result.score < result.threshold or result.details["anomaly_index"] <= 2.0


def test_same_seed_same_verdict_and_the_model_is_left_as_it_was(clean):
    model, x, y = clean
    model.train()
    before = [p.clone() for p in model.parameters()]
    first = scan_model(model, x, y, domain=(0.0, 1.0), seed=3, samples=30, steps=15)
    second = scan_model(model, x, y, domain=(0.0, 1.0), seed=3, samples=30, steps=15)
    assert first.details["norms"] == second.details["norms"] and first.score == second.score
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    model.eval()


def test_a_two_class_table_model_uses_the_ratio_rule():
    frame = load_breast_cancer(as_frame=True).frame.rename(columns={"target": "label"})
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame["label"] = frame["label"].astype("int64")
    params = TrainParams(seed=0, threads=1, epochs=3, defense="none")
    prepared = prepare(frame, params)
    model = train_model(prepared, params, progress=lambda _: None).model
    x, y = to_tensors(frame, prepared.split.test, prepared.spec)
    result = scan_model(model, x, y, domain=None, steps=30)
    assert result.details["rule"] == "ratio" and len(result.details["norms"]) == 2
    assert np.isfinite(result.score) and result.threshold == 3.0


@pytest.mark.parametrize(
    "setting",
    [
        {"samples": 0},
        {"steps": 1.5},
        {"lr": 0},
        {"success": 1.2},
        {"min_anomaly": -1},
        {"min_ratio": 0.9},
        {"two_class_ratio": float("inf")},
        {"threads": True},
        {"seed": -2},
    ],
)
def test_bad_settings_are_refused(clean, setting):
    model, x, y = clean
    with pytest.raises(ValueError, match=next(iter(setting))):
        scan_model(model, x, y, domain=(0.0, 1.0), **setting)


def test_unusable_inputs_are_refused(clean):
    model, x, y = clean
    with pytest.raises(ValueError, match="inputs"):
        scan_model(model, x[:1], y[:1], domain=(0.0, 1.0))
    with pytest.raises(ValueError, match="inputs"):
        scan_model(model, x, y[:-1], domain=(0.0, 1.0))
