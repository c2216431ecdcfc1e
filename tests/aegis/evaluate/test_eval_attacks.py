"""Our PGD and the ART wrappers: threat model respected, deterministic, worst case kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from aegis.evaluate import attacks

EPS = 0.1
DOMAIN = (0.0, 1.0)


def _linear(n_features: int, n_classes: int, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A random linear classifier and tabular inputs it classifies (labels = its predictions)."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Linear(n_features, n_classes).eval()
    with torch.no_grad():
        model.weight.copy_(torch.randn(n_classes, n_features, generator=gen))
        model.bias.zero_()
    return model, torch.randn(64, n_features, generator=gen)


def test_pgd_stays_in_the_ball_and_the_domain(digits, undefended):
    x, y = digits.x_test[:100], digits.y_test[:100]
    x_adv, correct = attacks.pgd_examples(undefended, x, y, eps=EPS, steps=10, domain=DOMAIN)
    assert correct.dtype == bool and correct.shape == (100,)
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    # The returned examples are the ones that broke the model.
    fooled = undefended(x_adv).argmax(1) != y
    assert np.array_equal(fooled.numpy(), ~correct)


def test_pgd_breaks_an_undefended_model_and_eps_zero_is_clean(digits, undefended):
    x, y = digits.x_test[:200], digits.y_test[:200]
    clean = attacks.predict_correct(undefended, x, y)
    robust = attacks.pgd_correct(undefended, x, y, eps=EPS, steps=20, domain=DOMAIN)
    assert robust.mean() < clean.mean() - 0.3
    assert not (robust & ~clean).any()  # never correct under attack when wrong without
    zero = attacks.pgd_correct(undefended, x, y, eps=0.0, steps=20, domain=DOMAIN)
    assert np.array_equal(zero, clean)


def test_pgd_is_deterministic_and_restarts_keep_the_worst_case(digits, undefended):
    x, y = digits.x_test[:200], digits.y_test[:200]
    kwargs = {"eps": 0.05, "steps": 5, "domain": DOMAIN, "seed": 3, "batch_size": 256}
    once = attacks.pgd_correct(undefended, x, y, **kwargs)
    assert np.array_equal(once, attacks.pgd_correct(undefended, x, y, **kwargs))
    # One batch: the first of three restarts draws the same start as the single run.
    thrice = attacks.pgd_correct(undefended, x, y, restarts=3, **kwargs)
    assert not (thrice & ~once).any()
    assert thrice.sum() <= once.sum()


def test_default_step_size():
    assert attacks.default_step_size(0.1, 20) == pytest.approx(0.0125)


def test_apgd_ce_is_deterministic_and_leaves_global_rngs_alone(digits, undefended):
    x, y = digits.x_test[:64], digits.y_test[:64]
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    kwargs = {"eps": EPS, "domain": DOMAIN, "steps": 10, "seed": 7}
    first = attacks.apgd_ce_correct(undefended, x, y, **kwargs)
    assert first.dtype == bool and first.shape == (64,)
    assert np.array_equal(first, attacks.apgd_ce_correct(undefended, x, y, **kwargs))
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert first.mean() < attacks.predict_correct(undefended, x, y).mean() - 0.2


def test_apgd_t_and_square_return_per_sample_correctness(digits, undefended):
    x, y = digits.x_test[:40], digits.y_test[:40]
    clean = attacks.predict_correct(undefended, x, y)
    targeted = attacks.apgd_t_correct(
        undefended, x, y, eps=EPS, domain=DOMAIN, steps=10, targets=2, seed=0
    )
    square = attacks.square_correct(undefended, x, y, eps=EPS, domain=DOMAIN, queries=50, seed=0)
    for correct in (targeted, square):
        assert correct.dtype == bool and correct.shape == (40,)
        assert not (correct & ~clean).any()
    assert targeted.mean() < clean.mean()


def test_apgd_t_refuses_binary_models():
    model, x = _linear(6, 2)
    with pytest.raises(ValueError, match="at least 3 classes"):
        attacks.apgd_t_correct(model, x, model(x).argmax(1), eps=0.5, steps=2)


def test_art_attacks_handle_tabular_inputs_without_domain():
    model, x = _linear(6, 3)
    y = model(x).argmax(1).detach()
    eps = 3.0  # huge in units of the features: every sample can be flipped
    square = attacks.square_correct(model, x, y, eps=eps, domain=None, queries=100, seed=0)
    apgd = attacks.apgd_ce_correct(model, x, y, eps=eps, domain=None, steps=10, seed=0)
    assert square.shape == apgd.shape == (64,)
    assert square.mean() < 0.5 and apgd.mean() < 0.5


def test_attacks_survive_a_model_without_input_gradient(digits, masked):
    x, y = digits.x_test[:32], digits.y_test[:32]
    clean = attacks.predict_correct(masked, x, y)
    pgd = attacks.pgd_correct(masked, x, y, eps=EPS, steps=5, domain=DOMAIN)
    apgd = attacks.apgd_ce_correct(masked, x, y, eps=EPS, domain=DOMAIN, steps=5)
    # Zero gradients: only the random start moves the inputs, so little changes.
    assert pgd.mean() >= clean.mean() - 0.15
    assert apgd.shape == (32,)
