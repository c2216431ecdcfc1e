"""Digits data and tiny models trained once per session for the evaluation tests.

The models are trained here with their own minimal loops (plain SGD, and PGD adversarial
training with an independent PGD), so the evaluation code is never graded by itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from aegis.config import EvaluateParams
from aegis.evaluate.evaluate import EvaluationResult, evaluate_model

EPS = 0.1  # the default training eps for digits (TrainParams.epsilon)
DOMAIN = (0.0, 1.0)


@dataclass(frozen=True)
class Digits:
    """Digits scaled to [0, 1] as ``(N, 1, 8, 8)``, split 75/25 stratified."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@contextmanager
def one_thread() -> Iterator[None]:
    """Runs torch single-threaded, then restores the caller's count.

    Tiny models gain nothing from a second thread, and on a busy 2-core machine two torch
    threads contend so badly that the session fixtures took 4 minutes instead of 20 s.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


class HardThreshold(nn.Module):
    """``x -> (x > 0.5)`` in front of a model: a non-differentiable step that masks gradients."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x > 0.5).float())


def _pgd_train_batch(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float
) -> torch.Tensor:
    """Madry et al.'s inner maximisation: 7 steps of eps/4 from a random start in the ball."""
    delta = (torch.rand_like(x) * 2 - 1) * eps
    for _ in range(7):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model((x + delta).clamp(*DOMAIN)), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + eps / 4 * grad.sign()).clamp(-eps, eps)
    return (x + delta).clamp(*DOMAIN).detach()


def train_cnn(
    data: Digits,
    *,
    epochs: int,
    adversarial_eps: float = 0.0,
    binarize: bool = False,
    seed: int = 0,
) -> nn.Module:
    """Trains ``small_cnn`` with SGD; PGD adversarial training when ``adversarial_eps > 0``."""
    torch.manual_seed(seed)
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x_all = (data.x_train > 0.5).float() if binarize else data.x_train
    for _ in range(epochs):
        perm = torch.randperm(len(x_all))
        for start in range(0, len(x_all), 64):
            idx = perm[start : start + 64]
            x, y = x_all[idx], data.y_train[idx]
            if adversarial_eps > 0:
                model.eval()
                x = _pgd_train_batch(model, x, y, adversarial_eps)
                model.train()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="session")
def digits() -> Digits:
    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, bunch.target, test_size=0.25, random_state=0, stratify=bunch.target
    )
    return Digits(
        torch.from_numpy(x_tr),
        torch.from_numpy(y_tr).long(),
        torch.from_numpy(x_te),
        torch.from_numpy(y_te).long(),
    )


@pytest.fixture(scope="session")
def undefended(digits: Digits) -> nn.Module:
    with one_thread():
        return train_cnn(digits, epochs=10)


@pytest.fixture(scope="session")
def pgd_trained(digits: Digits) -> nn.Module:
    with one_thread():
        return train_cnn(digits, epochs=10, adversarial_eps=EPS)


@pytest.fixture(scope="session")
def masked(digits: Digits) -> nn.Module:
    # Trained on binarised digits so the threshold costs little clean accuracy.
    with one_thread():
        return HardThreshold(train_cnn(digits, epochs=10, binarize=True)).eval()


# The sanity test's budgets: gradient attacks on 300 samples (APGD-T on the 3 likeliest wrong
# classes instead of AutoAttack's 9, for time), Square on the 100 x 500 budget.
GRADIENT_SUITE = EvaluateParams(max_samples=300, independent=["apgd-ce", "apgd-t"], apgd_targets=3)
SQUARE_SUITE = EvaluateParams(
    max_samples=300, independent=["square"], square_samples=100, square_queries=500
)


def run_evaluation(model: nn.Module, data: Digits, params: EvaluateParams, **overrides):
    """``evaluate_model`` on the digits split at the default eps; ``overrides`` replace kwargs."""
    kwargs = {
        "x_test": data.x_test,
        "y_test": data.y_test,
        "x_train": data.x_train,
        "y_train": data.y_train,
        "domain": DOMAIN,
        "train_eps": EPS,
        "params": params,
        "seed": 0,
    }
    return evaluate_model(model, **{**kwargs, **overrides})


@pytest.fixture(scope="session")
def run_eval():
    """``run_evaluation`` for tests (test modules cannot import this conftest by name)."""
    return run_evaluation


@pytest.fixture(scope="session")
def undefended_eval(digits: Digits, undefended: nn.Module) -> EvaluationResult:
    with one_thread():
        return run_evaluation(undefended, digits, GRADIENT_SUITE)


@pytest.fixture(scope="session")
def pgd_trained_eval(digits: Digits, pgd_trained: nn.Module) -> EvaluationResult:
    with one_thread():
        return run_evaluation(pgd_trained, digits, GRADIENT_SUITE)


@pytest.fixture(scope="session")
def masked_eval(digits: Digits, masked: nn.Module) -> EvaluationResult:
    with one_thread():
        return run_evaluation(masked, digits, SQUARE_SUITE)
