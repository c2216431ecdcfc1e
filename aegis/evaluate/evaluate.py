"""``evaluate_model``: every figure that decides whether a model may be promoted.

Clean and per-class accuracy, robust accuracy (our PGD, the independent suite and their
per-sample worst case, with flags), calibration, the privacy budget spent and a
membership-inference audit, gathered in an ``EvaluationResult`` whose ``to_metrics()`` is
the DVC ``metrics.json``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from aegis.config import EvaluateParams
from aegis.errors import ConfigError
from aegis.evaluate.attacks import Domain, predict_logits
from aegis.evaluate.calibration import CalibrationReport, calibration_from_probs
from aegis.evaluate.jobs import MapJobs
from aegis.evaluate.privacy_audit import MembershipAudit, membership_audit
from aegis.evaluate.robustness import Flag, RobustnessReport, assess_robustness

_METRIC_KEYS = {"apgd-ce": "apgd_ce", "apgd-t": "apgd_t", "square": "square"}


def _num(value: float | None) -> float | None:
    """A JSON-safe float rounded for a stable, readable metrics file (NaN becomes null)."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 6)


@dataclass(frozen=True)
class EvaluationResult:
    """Everything ``evaluate_model`` measured.

    Attributes:
        n_test: Test samples (clean accuracy, calibration).
        clean_accuracy: Accuracy on the whole test split.
        per_class_accuracy: Accuracy per class index (``None`` when a class has no sample).
        robustness: Attacks on the first ``params.max_samples`` test samples.
        calibration: ECE and reliability-diagram data on the whole test split.
        membership: Loss-threshold membership inference, or ``None`` when disabled.
        epsilon_spent: DP epsilon spent by training, or ``None`` without DP.
        delta: DP delta, or ``None`` without DP.
    """

    n_test: int
    clean_accuracy: float
    per_class_accuracy: list[float | None]
    robustness: RobustnessReport
    calibration: CalibrationReport
    membership: MembershipAudit | None
    epsilon_spent: float | None
    delta: float | None

    @property
    def worst_class_gap(self) -> float:
        """Clean accuracy minus the accuracy of the worst class."""
        present = [a for a in self.per_class_accuracy if a is not None]
        return self.clean_accuracy - min(present) if present else float("nan")

    @property
    def flags(self) -> list[Flag]:
        """Reasons to distrust the robustness figures."""
        return self.robustness.flags

    def to_metrics(self) -> dict[str, Any]:
        """The JSON-able metrics (``metrics.json``), nested one level for ``dvc metrics show``.

        Attacks not run are ``null``; run times are left out so the file is reproducible
        (see ``details``).
        """
        r = self.robustness
        runs = {key: r.independent.get(name) for name, key in _METRIC_KEYS.items()}
        mia = self.membership
        return {
            "clean_acc": _num(self.clean_accuracy),
            "per_class_acc": [_num(a) for a in self.per_class_accuracy],
            "worst_class_gap": _num(self.worst_class_gap),
            "robust": {
                "eps": _num(r.eps),
                "clean": _num(r.clean_accuracy),
                "pgd": _num(r.pgd.accuracy),
                **{key: _num(run.accuracy) if run else None for key, run in runs.items()},
                "worst_case": _num(r.worst_case),
            },
            "robust_stderr": {
                "pgd": _num(r.pgd.stderr),
                **{key: _num(run.stderr) if run else None for key, run in runs.items()},
                "worst_case": _num(r.worst_case_stderr),
            },
            "robust_sweep": {f"{eps:g}": _num(run.accuracy) for eps, run in r.sweep.items()},
            "ece": _num(self.calibration.ece),
            "epsilon_spent": _num(self.epsilon_spent),
            "delta": self.delta,
            "mia": {
                "auc": _num(mia.auc) if mia else None,
                "tpr_at_1fpr": _num(mia.tpr_at_1fpr) if mia else None,
            },
            "flags": [f.code for f in self.flags],
            "flag_reasons": {f.code: f.reason for f in self.flags},
            "samples": {
                "test": self.n_test,
                "attacked": r.n,
                "square": runs["square"].n if runs["square"] else 0,
                "mia_members": mia.n_members if mia else 0,
                "mia_nonmembers": mia.n_nonmembers if mia else 0,
            },
        }

    def details(self) -> dict[str, Any]:
        """JSON-able data for the report: curves, run times, gradient statistics."""
        r = self.robustness
        return {
            "attack_seconds": {
                **{name: round(run.seconds, 3) for name, run in r.independent.items()},
                "pgd": round(r.pgd.seconds, 3),
                "pgd_sweep": {f"{e:g}": round(run.seconds, 3) for e, run in r.sweep.items()},
            },
            "attack_samples": {"pgd": r.pgd.n, **{n: run.n for n, run in r.independent.items()}},
            "skipped_attacks": dict(r.skipped),
            "gradients": {
                "n": r.gradients.n,
                "median_l1": r.gradients.median_l1,
                "zero_share": r.gradients.zero_share,
            },
            "reliability": self.calibration.to_dict(),
            "mia_roc": {"fpr": self.membership.fpr, "tpr": self.membership.tpr}
            if self.membership
            else None,
        }


@contextmanager
def _model_state_kept(model: nn.Module) -> Iterator[None]:
    """Restores train/eval modes and parameter gradients (ART's backward() sets them)."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [
        (p, None if p.grad is None else p.grad.clone(), p.requires_grad) for p in model.parameters()
    ]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for param, grad, requires_grad in grads:
            param.grad = grad
            param.requires_grad_(requires_grad)


def _dp_budget(dp: dict | None) -> tuple[float | None, float | None]:
    if dp is None:
        return None, None
    epsilon = dp.get("epsilon_spent", dp.get("epsilon"))
    delta = dp.get("delta")
    if epsilon is None or delta is None:
        raise ValueError("dp must give 'epsilon_spent' (or 'epsilon') and 'delta'")
    return float(epsilon), float(delta)


def evaluate_model(
    model: nn.Module,
    *,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    domain: Domain,
    train_eps: float,
    params: EvaluateParams,
    seed: int,
    dp: dict | None = None,
    map_jobs: MapJobs | None = None,
) -> EvaluationResult:
    """Evaluates a trained classifier on a held-out test split.

    The model runs in eval mode; its modes and parameter gradients are restored afterwards.
    Deterministic given ``seed`` and the caller's torch thread count (the attack jobs
    always run with one torch thread each, wherever ``map_jobs`` runs them).

    Args:
        model: A classifier returning logits.
        x_test: Held-out inputs, as the model takes them (e.g. ``(N, 1, 8, 8)`` in [0, 1]).
        y_test: Held-out labels (class indices).
        x_train: Training inputs (members for the membership audit).
        y_train: Training labels.
        domain: ``(min, max)`` of valid inputs (attacks clamp to it), or ``None``.
        train_eps: The L-inf eps the model was trained (or is claimed) to resist.
        params: The ``evaluate`` section of params.
        seed: Seed of every random draw (attacks, audit subsets).
        dp: ``{"epsilon_spent" (or "epsilon"): float, "delta": float}`` for a DP model.
        map_jobs: Where the attack jobs run (see ``assess_robustness``); default serial.

    Raises:
        ConfigError: ``train_eps`` is not positive (robust accuracy at 0 is clean accuracy).
        ValueError: Inputs and labels disagree in length, or ``dp`` lacks a field.
    """
    if train_eps <= 0:
        raise ConfigError("train.epsilon: must be > 0 to evaluate robustness at it")
    x = torch.as_tensor(x_test, dtype=torch.float32)
    y = torch.as_tensor(y_test, dtype=torch.long)
    if len(x) != len(y) or len(x) == 0 or len(x_train) != len(y_train):
        raise ValueError("evaluate_model: inputs and labels must be non-empty and of equal length")
    epsilon_spent, delta = _dp_budget(dp)
    with _model_state_kept(model):
        model.eval()
        logits = predict_logits(model, x)
        correct = (logits.argmax(1) == y).numpy()
        labels = y.numpy()
        per_class = [
            float(correct[labels == c].mean()) if (labels == c).any() else None
            for c in range(logits.shape[1])
        ]
        calibration = calibration_from_probs(
            logits.double().softmax(1).numpy(), labels, bins=params.ece_bins
        )
        robustness = assess_robustness(
            model,
            x,
            y,
            eps=train_eps,
            domain=domain,
            params=params,
            seed=seed,
            map_jobs=map_jobs,
        )
        membership = (
            membership_audit(model, x_train, y_train, x, y, seed=seed) if params.mia else None
        )
    return EvaluationResult(
        n_test=len(x),
        clean_accuracy=float(np.mean(correct)),
        per_class_accuracy=per_class,
        robustness=robustness,
        calibration=calibration,
        membership=membership,
        epsilon_spent=epsilon_spent,
        delta=delta,
    )
