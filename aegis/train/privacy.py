"""Differentially private SGD: one wrapper around Opacus's PrivacyEngine.

The noise multiplier is chosen for a target (ε, δ) over the planned number
of steps, batches are drawn by Poisson sampling (what the accountant
assumes), and the accountant's state is returned as JSON so it is saved with
the weights.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from aegis.config import DPParams
from aegis.errors import ConfigError

# Opacus's RDP analysis hints that more alphas could tighten ε; the bound it gives holds.
_ALPHA_HINT = "Optimal order is the largest alpha"


@dataclass
class PrivateTraining:
    """What :func:`make_private` returns: train with these, not the originals."""

    engine: Any  # opacus.PrivacyEngine
    model: nn.Module  # opacus GradSampleModule
    optimizer: torch.optim.Optimizer  # opacus DPOptimizer
    loader: DataLoader  # Poisson-sampled
    params: DPParams
    noise_multiplier: float
    sample_rate: float
    planned_steps: int


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    *,
    params: DPParams,
    epochs: int,
    seed: int,
) -> PrivateTraining:
    """Makes a model, its optimizer and data loader differentially private.

    Incompatible layers are replaced with ``ModuleValidator.fix`` (the optimizer
    is then rebuilt with its defaults for the new parameters).

    Args:
        model: The model to train.
        optimizer: Its optimizer (one parameter group).
        loader: The training data loader (its generator seeds Poisson sampling).
        params: ``train.dp``.
        epochs: Planned epochs: the noise is set so that all of them spend at most ε.
        seed: Seeds the noise generator (ignored in secure mode, which uses a CSPRNG).

    Raises:
        ConfigError: ``secure_mode`` without torchcsprng, a model Opacus cannot
            fix, or a budget too small for any noise level.
    """
    if params.secure_mode:
        try:
            import torchcsprng  # noqa: F401
        except ImportError:
            raise ConfigError(
                "train.dp.secure_mode needs torchcsprng, which is not installable with this torch"
            ) from None
    from opacus import PrivacyEngine
    from opacus.accountants.utils import get_noise_multiplier
    from opacus.validators import ModuleValidator

    if ModuleValidator.validate(model, strict=False):
        model = ModuleValidator.fix(model)
        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise ConfigError(f"train.model: not trainable with Opacus: {errors[0]}")
        optimizer = type(optimizer)(model.parameters(), **optimizer.defaults)
    sample_rate = 1 / len(loader)
    steps = epochs * len(loader)
    # make_private_with_epsilon plans int(epochs / sample_rate) steps, one too few when the
    # division rounds down (1 epoch of 93 batches plans 92); plan the exact count instead.
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_ALPHA_HINT)
            noise = get_noise_multiplier(
                target_epsilon=params.target_epsilon,
                target_delta=params.delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=params.accountant,
            )
    except ValueError as exc:
        raise ConfigError(f"train.dp: {exc}") from None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=params.accountant, secure_mode=params.secure_mode)
    generator = None if params.secure_mode else torch.Generator().manual_seed(seed)
    private_model, private_optimizer, private_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=noise,
        max_grad_norm=params.max_grad_norm,
        poisson_sampling=True,
        noise_generator=generator,
    )
    return PrivateTraining(
        engine=engine,
        model=private_model,
        optimizer=private_optimizer,
        loader=private_loader,
        params=params,
        noise_multiplier=float(noise),
        sample_rate=sample_rate,
        planned_steps=steps,
    )


def epsilon_spent(private: PrivateTraining) -> float:
    """ε spent so far at the configured δ (0 before the first step)."""
    if not private.engine.accountant.history:
        return 0.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_ALPHA_HINT)
        return float(private.engine.get_epsilon(private.params.delta))


def accountant_state(private: PrivateTraining) -> dict[str, Any]:
    """The accounting as JSON: enough to recompute ε (saved in ``config.json["privacy"]``)."""
    accountant = private.engine.accountant
    return {
        "accountant": accountant.mechanism(),
        "history": [[float(nm), float(rate), int(steps)] for nm, rate, steps in accountant.history],
        "noise_multiplier": private.noise_multiplier,
        "sample_rate": private.sample_rate,
        "steps": sum(int(steps) for _, _, steps in accountant.history),
        "planned_steps": private.planned_steps,
        "max_grad_norm": private.params.max_grad_norm,
        "poisson_sampling": True,
        "secure_mode": private.params.secure_mode,
        "target_epsilon": private.params.target_epsilon,
        "delta": private.params.delta,
        "epsilon": epsilon_spent(private),
    }


@contextlib.contextmanager
def hooks_disabled(model: nn.Module) -> Iterator[None]:
    """Turns Opacus's per-sample-gradient hooks off for the block (no-op for other models).

    Attack generation needs input gradients only; with the hooks on, its
    backward passes would pop activations meant for the training step.
    Nested use is safe: the previous state is restored.
    """
    opacus = sys.modules.get("opacus")  # not imported: the model cannot be an Opacus wrapper
    if opacus is None or not isinstance(model, opacus.GradSampleModule):
        yield
        return
    was_enabled = model.hooks_enabled
    model.disable_hooks()
    try:
        yield
    finally:
        if was_enabled:
            model.enable_hooks()
