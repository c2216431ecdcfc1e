"""evaluate_model end to end: metrics shape, determinism, model left unchanged."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from aegis.config import EvaluateParams
from aegis.errors import ConfigError

# Every attack, on a budget small enough to run twice in a few seconds.
TINY = EvaluateParams(
    max_samples=40,
    pgd_steps=5,
    epsilons=[0.05, 0.2],
    independent=["apgd-ce", "apgd-t", "square"],
    square_samples=10,
    square_queries=20,
    apgd_steps=5,
    apgd_targets=2,
)


@pytest.mark.slow
def test_metrics_are_json_and_complete(undefended_eval):
    metrics = json.loads(json.dumps(undefended_eval.to_metrics(), allow_nan=False))
    assert metrics["clean_acc"] == pytest.approx(undefended_eval.clean_accuracy, abs=1e-6)
    assert len(metrics["per_class_acc"]) == 10
    assert 0 <= metrics["worst_class_gap"] < 0.2
    robust = metrics["robust"]
    assert robust["eps"] == 0.1 and robust["square"] is None
    assert robust["worst_case"] <= min(robust["pgd"], robust["apgd_ce"], robust["apgd_t"])
    assert list(metrics["robust_sweep"]) == ["0.05", "0.1", "0.15", "0.2"]
    sweep = list(metrics["robust_sweep"].values())
    assert sweep == sorted(sweep, reverse=True)  # stronger attacks, lower accuracy
    assert 0 <= metrics["ece"] < 0.1
    assert metrics["epsilon_spent"] is None and metrics["delta"] is None
    assert 0 < metrics["mia"]["auc"] < 1
    assert metrics["flags"] == [] and metrics["flag_reasons"] == {}
    assert metrics["samples"] == {
        "test": 450,
        "attacked": 300,
        "square": 0,
        "mia_members": 450,
        "mia_nonmembers": 450,
    }
    details = json.loads(json.dumps(undefended_eval.details(), allow_nan=False))
    assert set(details["attack_seconds"]) == {"pgd", "apgd-ce", "apgd-t", "pgd_sweep"}
    assert sum(details["reliability"]["count"]) == 450


def test_evaluation_is_deterministic_and_leaves_the_model_alone(digits, undefended, run_eval):
    model = copy.deepcopy(undefended)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = run_eval(model, digits, TINY)
    assert all(p.grad is None for p in model.parameters())  # ART's backward() undone
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training
    second = run_eval(model, digits, TINY)
    assert first.to_metrics() == second.to_metrics()
    assert first.to_metrics()["samples"]["square"] == 10

    model.train()
    run_eval(model, digits, TINY.model_copy(update={"mia": False}))
    assert all(m.training for m in model.modules())


def test_dp_budget_and_disabled_audit(digits, undefended, run_eval):
    params = TINY.model_copy(update={"mia": False, "independent": []})
    result = run_eval(undefended, digits, params, dp={"epsilon_spent": 2.5, "delta": 1e-5})
    metrics = result.to_metrics()
    assert metrics["epsilon_spent"] == 2.5 and metrics["delta"] == 1e-5
    assert metrics["mia"] == {"auc": None, "tpr_at_1fpr": None}
    assert metrics["robust"]["apgd_ce"] is None
    assert result.details()["mia_roc"] is None


def test_refusals(digits, undefended, run_eval):
    with pytest.raises(ValueError, match="delta"):
        run_eval(undefended, digits, TINY, dp={"epsilon": 1.0})
    with pytest.raises(ConfigError, match=r"train\.epsilon"):
        run_eval(undefended, digits, TINY, train_eps=0.0)
