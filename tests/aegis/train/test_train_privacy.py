"""DP-SGD with Opacus: ε stays under the target, robust training combines, secure mode is gated."""

from __future__ import annotations

import contextlib
import json
import sys

import pytest
import torch
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier
from torch.utils.data import DataLoader, TensorDataset

import aegis.train.defenses
import aegis.train.trainer as trainer
from aegis.config import DPParams, ModelParams
from aegis.errors import ConfigError
from aegis.train.models import model_from_config
from aegis.train.privacy import accountant_state, epsilon_spent, make_private
from aegis.train.trainer import train_model

TINY = ModelParams(channels=[4], hidden=[16])
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


def _dp(small_params, *, accountant="rdp", **overrides):
    """DP params; RDP by default: PRV's noise search alone takes seconds."""
    dp = DPParams(target_epsilon=3.0, accountant=accountant)
    base = dict(privacy="dp", dp=dp, model=TINY, epochs=2, batch_size=32)
    return small_params(**{**base, **overrides})


def test_dp_training_spends_at_most_the_target_and_saves_the_accountant(
    digits, as_data, small_params
):
    result = train_model(as_data(digits, 500), _dp(small_params, accountant="prv"))

    privacy = result.privacy
    assert json.loads(json.dumps(privacy)) == privacy  # JSON-able, goes into config.json
    assert privacy["accountant"] == "prv" and privacy["poisson_sampling"] is True
    assert privacy["target_epsilon"] == 3.0 and privacy["delta"] == 1e-5
    assert 0 < privacy["epsilon"] <= 3.0
    assert privacy["steps"] == privacy["planned_steps"] == sum(s for *_, s in privacy["history"])
    assert privacy["history"][0][:2] == [privacy["noise_multiplier"], privacy["sample_rate"]]
    eps = [r["epsilon"] for r in result.history]
    assert eps == sorted(eps) and eps[-1] == privacy["epsilon"]
    # ε recomputed from the saved state alone
    accountant = create_accountant("prv")
    accountant.history = [tuple(h) for h in privacy["history"]]
    assert accountant.get_epsilon(1e-5) == pytest.approx(privacy["epsilon"])
    assert not any(n.startswith("_module") for n in result.model.state_dict())


@pytest.mark.parametrize("defense", ["pgd", "fgsm_rs", "trades"])
def test_robust_training_inside_opacus_runs(digits, as_data, small_params, defense):
    params = _dp(small_params, defense=defense, steps=2, epochs=1)
    result = train_model(as_data(digits, 300), params)
    assert result.privacy["epsilon"] <= 3.0
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    record = result.history[0]
    assert record["train_loss"] == record["train_loss"]  # not NaN


def test_without_hooks_disabled_opacus_pgd_training_breaks(
    digits, as_data, small_params, monkeypatch
):
    """The known breakage the hooks_disabled guard exists for."""
    monkeypatch.setattr(aegis.train.defenses, "hooks_disabled", lambda m: contextlib.nullcontext())
    with pytest.raises(ValueError, match="activations"):
        train_model(as_data(digits, 300), _dp(small_params, defense="pgd", steps=2, epochs=1))


@pytest.mark.parametrize("defense", ["none", "pgd", "trades"])
def test_an_empty_poisson_batch_takes_a_finite_noise_only_step(defense, small_params):
    model = model_from_config(
        {"kind": "cnn", "input_shape": [1, 8, 8], "classes": 10, "channels": [4], "hidden": [8],
         "activation": "relu", "norm": "group"}
    )  # fmt: skip
    data = TensorDataset(torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,)))
    loader = DataLoader(data, batch_size=8, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    private = make_private(model, opt, loader, params=DPParams(accountant="rdp"), epochs=1, seed=0)
    before = [p.detach().clone() for p in private.model.parameters()]
    objective = trainer._objective(small_params(defense=defense, steps=2), (0.0, 1.0))

    loss, _ = objective(private.model.train(), torch.zeros(0, 1, 8, 8), torch.zeros(0).long())
    loss.backward()
    private.optimizer.step()

    after = list(private.model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))  # noise


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_the_noise_is_planned_for_the_exact_step_count():
    """Opacus plans int(epochs / (1 / 93)) = 92 steps for one epoch of 93 batches."""
    data = TensorDataset(torch.rand(93, 4), torch.randint(0, 2, (93,)))
    loader = DataLoader(data, batch_size=1, generator=torch.Generator().manual_seed(0))
    model = model_from_config(
        {"kind": "mlp", "input_shape": [4], "classes": 2, "channels": [], "hidden": [3],
         "activation": "relu", "norm": "none"}
    )  # fmt: skip
    params = DPParams(target_epsilon=3.0, accountant="rdp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    private = make_private(model, opt, loader, params=params, epochs=1, seed=0)
    assert private.planned_steps == 93 and epsilon_spent(private) == 0.0
    for _ in range(93):
        private.engine.accountant.step(
            noise_multiplier=private.noise_multiplier, sample_rate=private.sample_rate
        )
    assert epsilon_spent(private) <= 3.0
    assert accountant_state(private)["steps"] == 93
    opacus_plan = get_noise_multiplier(
        target_epsilon=3.0, target_delta=1e-5, sample_rate=1 / 93, epochs=1, accountant="rdp"
    )
    accountant = create_accountant("rdp")
    accountant.history = [(opacus_plan, 1 / 93, 93)]
    assert accountant.get_epsilon(1e-5) > 3.0  # what make_private_with_epsilon would spend


def test_secure_mode_without_torchcsprng_is_a_config_error(
    digits, as_data, small_params, monkeypatch
):
    monkeypatch.setitem(sys.modules, "torchcsprng", None)  # import fails as when not installed
    params = _dp(small_params).model_copy(
        update={"dp": DPParams(target_epsilon=3.0, secure_mode=True)}
    )
    with pytest.raises(ConfigError, match="torchcsprng") as info:
        train_model(as_data(digits, 100), params)
    assert info.value.exit_code == 2
    assert "secure_mode" in str(info.value)


def test_a_budget_too_small_is_a_config_error(digits, as_data, small_params):
    params = _dp(small_params).model_copy(update={"dp": DPParams(target_epsilon=1e-6)})
    with pytest.raises(ConfigError, match=r"train\.dp"):
        train_model(as_data(digits, 100), params)
