"""Adversarial examples for training: FGSM-RS, PGD and the TRADES loss (L-inf).

Every attack keeps its examples inside the ε-ball around the clean inputs
and inside the input domain (when there is one), runs in eval mode with
Opacus's hooks off, and leaves the model in the train/eval mode it found.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from aegis.train.privacy import hooks_disabled

Domain = tuple[float, float] | None


@contextlib.contextmanager
def attacking(model: nn.Module) -> Iterator[None]:
    """Eval mode, Opacus hooks off and gradients on for the block; the mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with hooks_disabled(model), torch.enable_grad():
            yield
    finally:
        model.train(was_training)


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, domain: Domain) -> torch.Tensor:
    """Into the ε-ball around ``x``, then the domain (``x`` is in it, so the ball still holds)."""
    x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
    return x_adv if domain is None else x_adv.clamp(*domain)


def _input_grad(model: nn.Module, x: torch.Tensor, loss_fn) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(model(x)), x)  # parameters' .grad stay untouched
    return grad


def fgsm_rs_examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    domain: Domain,
    alpha: float | None = None,
) -> torch.Tensor:
    """FGSM with a random start (Wong et al. 2020, "Fast is better than free").

    A uniform start in [-ε, ε], one signed-gradient step of ``alpha``
    (default 1.25 ε), then projection back to the ε-ball and the domain.
    """
    alpha = 1.25 * eps if alpha is None else alpha
    with attacking(model):
        start = _project(x + torch.empty_like(x).uniform_(-eps, eps), x, eps, domain)
        grad = _input_grad(model, start, lambda logits: F.cross_entropy(logits, y, reduction="sum"))
        return _project(start + alpha * grad.sign(), x, eps, domain).detach()


def pgd_examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    domain: Domain,
    random_start: bool = True,
) -> torch.Tensor:
    """Projected gradient descent on the cross-entropy (Madry et al. 2018)."""
    with attacking(model):
        x_adv = x.detach()
        if random_start:
            x_adv = _project(x + torch.empty_like(x).uniform_(-eps, eps), x, eps, domain)
        for _ in range(steps):
            grad = _input_grad(
                model, x_adv, lambda logits: F.cross_entropy(logits, y, reduction="sum")
            )
            x_adv = _project(x_adv + step_size * grad.sign(), x, eps, domain)
        return x_adv.detach()


def trades_examples(
    model: nn.Module, x: torch.Tensor, *, eps: float, step_size: float, steps: int, domain: Domain
) -> torch.Tensor:
    """TRADES's inner maximization: inputs whose predictions diverge (KL) most from clean ones."""
    with attacking(model):
        with torch.no_grad():
            clean = F.softmax(model(x), dim=1)
        x_adv = _project(x + 0.001 * torch.randn_like(x), x, eps, domain)
        for _ in range(steps):
            grad = _input_grad(
                model,
                x_adv,
                lambda logits: F.kl_div(F.log_softmax(logits, dim=1), clean, reduction="sum"),
            )
            x_adv = _project(x_adv + step_size * grad.sign(), x, eps, domain)
        return x_adv.detach()


def trades_terms(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    beta: float,
    domain: Domain,
    loss=F.cross_entropy,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The TRADES loss and the clean logits (for accuracy), in the model's current mode.

    ``loss`` is the natural term's classification loss (``train.loss``).
    """
    x_adv = trades_examples(model, x, eps=eps, step_size=step_size, steps=steps, domain=domain)
    logits = model(x)
    robust = F.kl_div(
        F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean"
    )
    return loss(logits, y) + beta * robust, logits


def trades_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    beta: float,
    domain: Domain,
) -> torch.Tensor:
    """TRADES (Zhang et al. 2019): CE(clean) + β · KL(adversarial ‖ clean), ``batchmean``.

    The adversarial inputs start at ``x + 0.001 N(0, 1)`` and climb the KL for ``steps``
    signed steps of ``step_size`` inside the ε-ball and domain.
    """
    loss, _ = trades_terms(
        model, x, y, eps=eps, step_size=step_size, steps=steps, beta=beta, domain=domain
    )
    return loss
