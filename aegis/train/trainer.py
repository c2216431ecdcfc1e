"""The training loop: robust (FGSM-RS, PGD, TRADES) and optionally DP, reproducibly.

Same data, params, seed, thread count and torch build on the same machine
type give the same weights: every random draw comes from a seeded generator,
torch runs with deterministic algorithms and a fixed thread count.
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aegis.config import TrainParams
from aegis.errors import ConfigError
from aegis.timeutil import utc_now
from aegis.train.checkpoint import save_checkpoint, weights_of
from aegis.train.data import (
    DataSpec,
    PreparedData,
    Split,
    TrainingData,
    input_domain,
    prepare,
    to_tensors,
)
from aegis.train.defenses import fgsm_rs_examples, pgd_examples, trades_terms
from aegis.train.losses import loss_for
from aegis.train.models import build_model, model_config, model_from_config
from aegis.train.privacy import accountant_state, epsilon_spent, make_private
from aegis.train.progress import EpochCallback, Progress, progress_for

# Harmless: Opacus's hooks warn that the first layer's input needs no gradient in a step.
_NOISE = ("Full backward hook is firing",)

Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TrainResult:
    """A trained model and how training went."""

    model: nn.Module  # a plain module (no Opacus wrapper or hooks), in eval mode
    spec: DataSpec
    split: Split
    history: list[dict[str, Any]]  # one record per epoch
    privacy: dict[str, Any] | None  # accountant state (see privacy.accountant_state)
    stopped_early: bool
    best_epoch: int | None  # the epoch whose weights were kept, with early stopping


def train_model(
    data: TrainingData | PreparedData | tuple[Any, DataSpec, Split],
    params: TrainParams,
    *,
    progress: EpochCallback | None = None,
) -> TrainResult:
    """Trains a model on the training split as ``params`` say.

    Args:
        data: Training data (split and spec are then derived from ``params``), or
            a prepared ``(frame, spec, split)``.
        params: ``train`` section of params.yaml.
        progress: Called with each epoch's record; None shows rich bars when
            stderr is a terminal and nothing otherwise.

    Raises:
        ConfigError: Early stopping without a validation split, or DP settings
            that cannot be met.
    """
    frame, spec, split = prepare(data, params) if isinstance(data, TrainingData) else data
    if params.early_stop_patience and len(split.val) == 0:
        raise ConfigError("train.early_stop_patience needs train.val_fraction > 0")
    x_train, y_train = to_tensors(frame, split.train, spec)
    x_val, y_val = to_tensors(frame, split.val, spec)
    with _reproducible(seed=params.seed, threads=params.threads):
        model, optimizer, loader, private = _setup(spec, params, x_train, y_train)
        objective = _objective(params, input_domain(spec, params))
        stopper = _EarlyStopping(params.early_stop_patience)
        history: list[dict[str, Any]] = []
        with progress_for(progress, epochs=params.epochs) as bars:
            for epoch in range(1, params.epochs + 1):
                started = time.perf_counter()
                bars.start(epoch, len(loader))
                train_loss, train_acc = _train_epoch(model, optimizer, loader, objective, bars)
                val_loss, val_acc = _evaluate(model, x_val, y_val) if len(y_val) else (None, None)
                record = {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "train_acc": train_acc,
                    "val_loss": val_loss,
                    "val_acc": val_acc,
                    "seconds": round(time.perf_counter() - started, 3),
                }
                if private is not None:
                    record["epsilon"] = epsilon_spent(private)
                history.append(record)
                bars.end(record)
                if stopper.stop(epoch, val_loss, model):
                    break
        # a fresh module: no Opacus wrapper or hooks left to break later attacks
        plain = model_from_config(model_config(spec, params.model))
        plain.load_state_dict(stopper.best_weights or weights_of(model))
    return TrainResult(
        model=plain.eval(),
        spec=spec,
        split=split,
        history=history,
        privacy=accountant_state(private) if private else None,
        stopped_early=stopper.stopped,
        best_epoch=stopper.best_epoch,
    )


def _setup(spec: DataSpec, params: TrainParams, x: torch.Tensor, y: torch.Tensor):
    """Model, optimizer and loader, made private (Opacus) when ``train.privacy`` is dp."""
    model = build_model(spec, params.model, seed=params.seed)
    optimizer = _optimizer(model, params)
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=min(params.batch_size, len(x)),
        shuffle=True,
        generator=torch.Generator().manual_seed(params.seed),
    )
    if params.privacy != "dp":
        return model, optimizer, loader, None
    private = make_private(
        model, optimizer, loader, params=params.dp, epochs=params.epochs, seed=params.seed
    )
    return private.model, private.optimizer, private.loader, private


@dataclass
class _EarlyStopping:
    """Stops after ``patience`` epochs without a lower validation loss; keeps the best weights."""

    patience: int
    best_epoch: int | None = None
    best_loss: float = math.inf
    best_weights: dict[str, torch.Tensor] | None = None
    stopped: bool = False

    def stop(self, epoch: int, val_loss: float | None, model: nn.Module) -> bool:
        if not self.patience:
            return False
        if val_loss < self.best_loss:
            self.best_epoch, self.best_loss, self.best_weights = epoch, val_loss, weights_of(model)
        else:
            self.stopped = epoch - self.best_epoch >= self.patience
        return self.stopped


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    objective: Objective,
    bars: Progress,
) -> tuple[float, float]:
    """One pass over the loader; the mean loss and accuracy of what was trained on."""
    model.train()
    seen, loss_sum, correct = 0, 0.0, 0
    for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        loss, logits = objective(model, x, y)
        loss.backward()
        optimizer.step()  # an empty Poisson batch still takes its (noise-only) DP step
        if len(y):
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(dim=1) == y).sum())
            bars.batch(loss_sum / seen, correct / seen)
    return loss_sum / max(seen, 1), correct / max(seen, 1)


def _objective(params: TrainParams, domain: tuple[float, float] | None) -> Objective:
    """``(model, x, y) -> (loss, logits)`` for ``params.defense``."""
    eps, step, steps = params.epsilon, params.step_size, params.steps
    loss = loss_for(params)

    def objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        if params.defense == "trades":
            return trades_terms(
                model, x, y, eps=eps, step_size=step, steps=steps, beta=params.trades_beta,
                domain=domain, loss=loss,
            )  # fmt: skip
        if params.defense == "fgsm_rs":
            x = fgsm_rs_examples(model, x, y, eps=eps, domain=domain)
        elif params.defense == "pgd":
            x = pgd_examples(model, x, y, eps=eps, step_size=step, steps=steps, domain=domain)
        logits = model(x)
        return loss(logits, y), logits

    return objective


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Clean loss and accuracy in eval mode (the mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        logits = torch.cat([model(chunk) for chunk in x.split(1024)])
    finally:
        model.train(was_training)
    return F.cross_entropy(logits, y).item(), (logits.argmax(dim=1) == y).float().mean().item()


def _optimizer(model: nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    if params.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=params.lr)
    return torch.optim.SGD(model.parameters(), lr=params.lr, momentum=params.momentum)


@contextlib.contextmanager
def _reproducible(*, seed: int, threads: int) -> Iterator[None]:
    """Seeded RNGs, fixed threads, deterministic kernels; the caller's state is restored."""
    saved_threads = torch.get_num_threads()
    saved_deterministic = torch.are_deterministic_algorithms_enabled()
    saved_numpy = np.random.get_state()
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        for noise in _NOISE:
            warnings.filterwarnings("ignore", message=noise)
        torch.manual_seed(seed)
        np.random.seed(seed)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.set_num_threads(saved_threads)
            torch.use_deterministic_algorithms(saved_deterministic)
            np.random.set_state(saved_numpy)


def train_and_save(
    data: TrainingData,
    params: TrainParams,
    *,
    out_dir: Path,
    progress: EpochCallback | None = None,
) -> str:
    """Splits, trains and writes the checkpoint to ``out_dir``; returns the model digest.

    ``config.json`` gets everything that defines the model; times, host and
    versions go to ``metadata.json`` (outside the digest).
    """
    prepared = prepare(data, params)
    started, clock = utc_now(), time.perf_counter()
    result = train_model(prepared, params, progress=progress)
    config = {
        "model": model_config(result.spec, params.model),
        "data": result.spec.to_json(),
        "split": result.split.to_json(),
        "train": params.model_dump(mode="json", by_alias=True),
        "privacy": result.privacy,
        "dataset": data.dataset_digest,
        "quarantine": {"excluded": data.excluded_rows, "released": data.released_rows},
        **(
            {"trusted_set": {"ref": data.trusted_set, "excluded": data.trusted_excluded}}
            if data.trusted_set
            else {}
        ),
    }
    metadata = {
        "dataset_name": data.name,
        "started": started,
        "finished": utc_now(),
        "seconds": round(time.perf_counter() - clock, 3),
        "host": platform.node(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "versions": {pkg: _version(pkg) for pkg in ("torch", "opacus", "numpy", "safetensors")},
        "threads": params.threads,
        "interop_threads": torch.get_num_interop_threads(),
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "best_epoch": result.best_epoch,
        "history": result.history,
    }
    return save_checkpoint(out_dir, model=result.model, config=config, metadata=metadata)


def _version(package: str) -> str | None:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return None
