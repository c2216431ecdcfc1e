"""Attacks for adversarial training: inside the ε-ball and the domain, modes and hooks restored."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule

from aegis.train.data import to_tensors
from aegis.train.defenses import (
    fgsm_rs_examples,
    pgd_examples,
    trades_examples,
    trades_loss,
    trades_terms,
)
from aegis.train.models import model_from_config
from aegis.train.privacy import hooks_disabled
from aegis.train.trainer import train_model

EPS = 0.1
DOMAIN = (0.0, 1.0)


@pytest.fixture(scope="module")
def trained(digits, as_data, small_params):
    """An undefended small CNN (a few epochs) and 200 test digits it mostly gets right."""
    data = as_data(digits, 800)
    result = train_model(data, small_params(epochs=5, batch_size=32))
    x, y = to_tensors(data.frame, result.split.test, result.spec)
    return result.model, x, y


ATTACKS = {
    "fgsm_rs": lambda m, x, y, domain: fgsm_rs_examples(m, x, y, eps=EPS, domain=domain),
    "pgd": lambda m, x, y, domain: pgd_examples(
        m, x, y, eps=EPS, step_size=0.025, steps=7, domain=domain
    ),
    "trades": lambda m, x, y, domain: trades_examples(
        m, x, eps=EPS, step_size=0.025, steps=5, domain=domain
    ),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_examples_stay_in_the_ball_and_domain_and_leave_the_model_as_it_was(trained, name, mode):
    model, x, y = trained
    model.train(mode == "train")
    torch.manual_seed(0)

    x_adv = ATTACKS[name](model, x, y, DOMAIN)

    assert model.training == (mode == "train")
    assert all(p.grad is None for p in model.parameters())  # input gradients only
    assert not x_adv.requires_grad and x_adv.shape == x.shape
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert (x_adv - x).abs().max() > EPS / 2  # it did move
    model.eval()


@pytest.mark.parametrize("name", ["fgsm_rs", "pgd"])
def test_attacks_raise_the_loss_and_lower_the_accuracy(trained, name):
    model, x, y = trained
    torch.manual_seed(0)
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y).item()
        clean_acc = (model(x).argmax(1) == y).float().mean().item()
    x_adv = ATTACKS[name](model, x, y, DOMAIN)  # works under no_grad callers too
    with torch.no_grad():
        adv = F.cross_entropy(model(x_adv), y).item()
        adv_acc = (model(x_adv).argmax(1) == y).float().mean().item()
    assert clean_acc > 0.8
    assert adv > clean and adv_acc < clean_acc


def test_pgd_without_random_start_is_deterministic_and_zero_eps_is_identity(trained):
    model, x, y = trained
    a = pgd_examples(
        model, x, y, eps=EPS, step_size=0.02, steps=3, domain=DOMAIN, random_start=False
    )
    b = pgd_examples(
        model, x, y, eps=EPS, step_size=0.02, steps=3, domain=DOMAIN, random_start=False
    )
    assert torch.equal(a, b)
    assert torch.equal(
        pgd_examples(model, x, y, eps=0.0, step_size=0.02, steps=3, domain=DOMAIN), x
    )


def test_without_a_domain_only_the_ball_binds(trained):
    model, x, y = trained
    shifted = x - 0.5  # inputs partly below 0: no clamp may pull them back
    x_adv = pgd_examples(model, shifted, y, eps=EPS, step_size=0.05, steps=3, domain=None)
    assert (x_adv - shifted).abs().max() <= EPS + 1e-6
    assert x_adv.min() < -0.5 + 1e-6


def test_trades_loss_is_finite_at_least_the_clean_loss_and_differentiable(trained):
    model, x, y = trained
    model.train()
    torch.manual_seed(0)
    loss = trades_loss(model, x, y, eps=EPS, step_size=0.025, steps=5, beta=6.0, domain=DOMAIN)
    assert torch.isfinite(loss)
    assert model.training
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y)
    assert loss.item() >= clean.item() - 1e-6
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.zero_grad(set_to_none=True)
    zero, logits = trades_terms(
        model, x, y, eps=EPS, step_size=0.025, steps=1, beta=0.0, domain=DOMAIN
    )
    assert zero.item() == pytest.approx(clean.item(), rel=1e-5) and logits.shape == (len(x), 10)
    model.eval()


def test_hooks_disabled_toggles_opacus_hooks_and_restores_them():
    plain = model_from_config(
        {"kind": "mlp", "input_shape": [4], "classes": 2, "channels": [], "hidden": [3],
         "activation": "relu", "norm": "none"}
    )  # fmt: skip
    with hooks_disabled(plain):  # not an Opacus module: nothing to do
        pass
    wrapped = GradSampleModule(plain)
    assert wrapped.hooks_enabled
    with hooks_disabled(wrapped):
        assert not wrapped.hooks_enabled
        with hooks_disabled(wrapped):
            assert not wrapped.hooks_enabled
        assert not wrapped.hooks_enabled  # nested exit keeps them off
    assert wrapped.hooks_enabled
    with pytest.raises(RuntimeError), hooks_disabled(wrapped):
        raise RuntimeError
    assert wrapped.hooks_enabled


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_attacks_inside_opacus_leave_per_sample_gradients_correct():
    """PGD/TRADES on a GradSampleModule: hooks off for the attack, true per-sample grads after."""
    torch.manual_seed(0)
    config = {"kind": "cnn", "input_shape": [1, 8, 8], "classes": 10, "channels": [4, 8],
              "hidden": [16], "activation": "relu", "norm": "group"}  # fmt: skip
    wrapped = GradSampleModule(model_from_config(config)).train()
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))

    torch.manual_seed(1)
    loss, _ = trades_terms(wrapped, x, y, eps=EPS, step_size=0.03, steps=3, beta=6.0, domain=DOMAIN)
    loss.backward()

    torch.manual_seed(1)  # the same adversarial inputs, for a per-sample reference
    x_adv = trades_examples(wrapped, x, eps=EPS, step_size=0.03, steps=3, domain=DOMAIN)
    reference = model_from_config(config)
    reference.load_state_dict(wrapped._module.state_dict())
    for i in range(len(x)):
        logits = reference(x[i : i + 1])
        per_sample = F.cross_entropy(logits, y[i : i + 1]) + 6.0 * F.kl_div(
            F.log_softmax(reference(x_adv[i : i + 1]), 1),
            F.softmax(logits, 1),
            reduction="batchmean",
        )
        grads = torch.autograd.grad(per_sample, list(reference.parameters()))
        for p, g in zip(wrapped.parameters(), grads, strict=True):
            assert torch.allclose(p.grad_sample[i], g, atol=1e-5)
