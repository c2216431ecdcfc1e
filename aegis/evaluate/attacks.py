"""L-inf evasion attacks that return per-sample correctness.

``pgd_correct`` is our own white-box PGD (the attack training uses); ``apgd_ce_correct``,
``apgd_t_correct`` and ``square_correct`` wrap the Adversarial Robustness Toolbox (ART) as
the independent suite. Every function takes a torch model in eval mode and tensors, and
returns a bool array over the same samples: ``True`` where the model still predicts the
true label after the attack. A sample misclassified without attack never counts as correct.
``pgd_examples`` and ``apgd_ce_examples`` also return the adversarial inputs themselves.

ART's output is never trusted blindly: adversarial examples are projected back into the
eps-ball (and the input domain) and re-scored with the model itself.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from aegis.evaluate.art_import import import_art
from aegis.evaluate.gradients import ce_input_gradient

Domain = tuple[float, float] | None

PGD_STEP_FACTOR = 2.5  # Madry et al.: steps travel 2.5 eps, enough to cross the ball
APGD_STEPS = 100  # AutoAttack's standard budget for APGD-CE and APGD-T
APGD_TARGETS = 9  # AutoAttack's standard: every other class of a 10-class problem
SQUARE_P_INIT = 0.8  # AutoAttack's setting for Square L-inf
# Square in ART needs at least 5x5 "pixels": smaller inputs are viewed as a padded square.
_SQUARE_MIN_SIDE = 5


def default_step_size(eps: float, steps: int) -> float:
    """The PGD step size used when none is given: ``2.5 * eps / steps``."""
    return PGD_STEP_FACTOR * eps / steps


def _slices(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _float(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32)


def _long(y: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(y, dtype=torch.long)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """Logits of ``model`` on ``x``, computed in batches without gradients."""
    x = _float(x)
    return torch.cat([model(x[s]) for s in _slices(len(x), batch_size)])


def predict_correct(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512
) -> np.ndarray:
    """Per-sample correctness of ``model`` on clean inputs."""
    return (predict_logits(model, x, batch_size=batch_size).argmax(1) == _long(y)).numpy()


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, domain: Domain) -> torch.Tensor:
    x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
    if domain is not None:
        x_adv = x_adv.clamp(domain[0], domain[1])
    return x_adv


def _record(
    x_cur: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, ok: torch.Tensor, best: torch.Tensor
) -> None:
    """Marks samples misclassified at ``x_cur`` as broken (in place) and keeps their input."""
    fooled = ok & (logits.argmax(1) != y)
    best[fooled] = x_cur[fooled]
    ok &= ~fooled


def pgd_examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float | None = None,
    restarts: int = 1,
    domain: Domain = None,
    seed: int = 0,
    batch_size: int = 256,
) -> tuple[torch.Tensor, np.ndarray]:
    """L-inf PGD with random start and restarts (Madry et al. 2018).

    A sample counts as broken as soon as any iterate of any restart is misclassified; the
    worst case over restarts is kept per sample.

    Args:
        model: A classifier returning logits, in eval mode.
        x: Inputs, float.
        y: True labels.
        eps: L-inf radius; ``0`` returns the clean inputs.
        steps: Gradient steps per restart.
        step_size: Step size; default ``2.5 * eps / steps``.
        restarts: Independent random starts.
        domain: ``(min, max)`` the inputs are clamped to, or ``None``.
        seed: Seed of the random starts.
        batch_size: Samples attacked at once.

    Returns:
        The adversarial inputs (the first misclassified iterate, or the last iterate where
        the attack failed) and per-sample correctness under attack.
    """
    x, y = _float(x), _long(y)
    if eps <= 0:
        return x.clone(), predict_correct(model, x, y)
    alpha = default_step_size(eps, steps) if step_size is None else step_size
    gen = torch.Generator().manual_seed(seed)
    adv = x.clone()
    correct = torch.zeros(len(x), dtype=torch.bool)
    for s in _slices(len(x), batch_size):
        x0, y0 = x[s], y[s]
        with torch.no_grad():
            ok = model(x0).argmax(1) == y0
        best = x0.clone()
        x_cur = x0
        for _ in range(restarts):
            noise = (torch.rand(x0.shape, generator=gen) * 2 - 1) * eps
            x_cur = _project(x0 + noise, x0, eps, domain)
            for _ in range(steps):
                grad, logits = ce_input_gradient(model, x_cur, y0)
                _record(x_cur, logits, y0, ok, best)
                x_cur = _project(x_cur + alpha * grad.sign(), x0, eps, domain)
            with torch.no_grad():
                _record(x_cur, model(x_cur), y0, ok, best)
        best[ok] = x_cur[ok]
        adv[s], correct[s] = best, ok
    return adv, correct.numpy()


def pgd_correct(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float | None = None,
    restarts: int = 1,
    domain: Domain = None,
    seed: int = 0,
    batch_size: int = 256,
) -> np.ndarray:
    """Per-sample correctness under our PGD; see ``pgd_examples`` for the arguments."""
    return pgd_examples(
        model,
        x,
        y,
        eps=eps,
        steps=steps,
        step_size=step_size,
        restarts=restarts,
        domain=domain,
        seed=seed,
        batch_size=batch_size,
    )[1]


# The global generators are one per process: two attacks drawing from them at once (jobs on
# a thread pool) would interleave their draws, and their results would depend on timing.
_GLOBAL_RNGS = threading.RLock()


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seeds the global generators ART draws from (numpy, Python, torch), then restores them.

    Holds a process-wide lock for the duration, so attacks using them run one at a time.
    """
    with _GLOBAL_RNGS:
        np_state, py_state = np.random.get_state(), random.getstate()
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class _DefinedGrad(nn.Module):
    """Adds a zero term in ``x`` so the input gradient always exists.

    ART raises when ``x.grad`` is ``None``, which a non-differentiable input layer causes;
    the attack must then run (and fail) rather than crash. Outputs are unchanged.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + 0.0 * x.flatten(1).sum(1, keepdim=True)


class _SquareView(nn.Module):
    """Shows any input to ART as a zero-padded ``(1, side, side)`` image.

    ART's Square only handles images of at least 5x5; the padding pixels are ignored by
    the wrapped model, so perturbing them changes nothing.
    """

    def __init__(self, model: nn.Module, feature_shape: tuple[int, ...], side: int) -> None:
        super().__init__()
        self.model = _DefinedGrad(model)
        self.feature_shape = feature_shape
        self.n_features = math.prod(feature_shape)
        self.side = side

    def to_image(self, x: np.ndarray) -> np.ndarray:
        flat = x.reshape(len(x), -1)
        padded = np.zeros((len(x), self.side * self.side), dtype=np.float32)
        padded[:, : self.n_features] = flat
        return padded.reshape(len(x), 1, self.side, self.side)

    def from_image(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1)[:, : self.n_features].reshape(len(x), *self.feature_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x.flatten(1)[:, : self.n_features]
        return self.model(features.reshape(len(x), *self.feature_shape))


def _clip_values(x: np.ndarray, eps: float, domain: Domain) -> tuple[float, float]:
    if domain is not None:
        return float(domain[0]), float(domain[1])
    # Unbounded inputs: the data range widened by eps contains every eps-ball, so ART's
    # clipping removes no freedom our PGD has.
    return float(x.min()) - eps, float(x.max()) + eps


def _art_classifier(module: nn.Module, x: np.ndarray, nb_classes: int, clip: tuple[float, float]):
    import_art()
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=module,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=nb_classes,
        clip_values=clip,
        device_type="cpu",
    )


def _rescore(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv: np.ndarray,
    eps: float,
    domain: Domain,
) -> np.ndarray:
    """Correctness on ART's examples, projected into the threat model and clean-correct only."""
    adv = _project(_float(x_adv).reshape(x.shape), x, eps, domain)
    return predict_correct(model, adv, y) & predict_correct(model, x, y)


def _apgd(
    clf,
    eps: float,
    steps: int,
    loss_type: str,
    *,
    targeted: bool = False,
    restarts: int = 1,
    batch_size: int,
):
    import_art()
    from art.attacks.evasion import AutoProjectedGradientDescent

    return AutoProjectedGradientDescent(
        clf,
        norm=np.inf,
        eps=eps,
        eps_step=2 * eps,  # APGD's initial step, as in AutoAttack; it halves adaptively
        max_iter=steps,
        targeted=targeted,
        nb_random_init=restarts,
        batch_size=batch_size,
        loss_type=loss_type,
        verbose=False,
    )


def apgd_ce_examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    domain: Domain = None,
    steps: int = APGD_STEPS,
    restarts: int = 1,
    seed: int = 0,
    batch_size: int = 128,
) -> tuple[torch.Tensor, np.ndarray]:
    """ART's APGD with cross-entropy loss (Croce & Hein 2020): its examples and correctness.

    Args:
        model: A classifier returning logits, in eval mode.
        x: Inputs, float.
        y: True labels.
        eps: L-inf radius; ``0`` returns the clean inputs and clean correctness.
        domain: ``(min, max)`` of valid inputs, or ``None`` (data range widened by eps).
        steps: Iterations per restart.
        restarts: Random initialisations (ART's ``nb_random_init``).
        seed: Seed of ART's random draws.
        batch_size: Samples attacked at once.

    Returns:
        ART's adversarial inputs projected into the eps-ball and the domain (the full
        budget's best-loss point, not the first misclassified one), and per-sample
        correctness on them (clean-correct samples only).
    """
    x, y = _float(x), _long(y)
    if eps <= 0:
        return x.clone(), predict_correct(model, x, y)
    x_np = x.numpy()
    nb_classes = predict_logits(model, x[:1]).shape[1]
    clf = _art_classifier(_DefinedGrad(model), x_np, nb_classes, _clip_values(x_np, eps, domain))
    with seeded_global_rngs(seed):  # ART draws from the global RNGs, even when building
        attack = _apgd(clf, eps, steps, "cross_entropy", restarts=restarts, batch_size=batch_size)
        x_adv = attack.generate(x_np, y=y.numpy())
    adv = _project(_float(x_adv).reshape(x.shape), x, eps, domain)
    return adv, _rescore(model, x, y, x_adv, eps, domain)


def apgd_ce_correct(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    domain: Domain = None,
    steps: int = APGD_STEPS,
    restarts: int = 1,
    seed: int = 0,
    batch_size: int = 128,
) -> np.ndarray:
    """Per-sample correctness under ART's APGD-CE; see ``apgd_ce_examples`` for the arguments."""
    return apgd_ce_examples(
        model,
        x,
        y,
        eps=eps,
        domain=domain,
        steps=steps,
        restarts=restarts,
        seed=seed,
        batch_size=batch_size,
    )[1]


def apgd_t_correct(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    domain: Domain = None,
    steps: int = APGD_STEPS,
    targets: int = APGD_TARGETS,
    seed: int = 0,
    batch_size: int = 128,
) -> np.ndarray:
    """Per-sample correctness under ART's targeted APGD with the DLR loss (APGD-T).

    As in AutoAttack, each still-robust sample is attacked towards its most likely wrong
    classes in turn (by clean logits), one run per target, and counts as broken if any
    run makes it misclassified (into any class).

    Args:
        model: A classifier returning logits (at least 3 classes), in eval mode.
        x: Inputs, float.
        y: True labels.
        eps: L-inf radius; ``0`` returns clean correctness.
        domain: ``(min, max)`` of valid inputs, or ``None`` (data range widened by eps).
        steps: Iterations per target.
        targets: Target classes tried per sample (capped at classes - 1).
        seed: Seed of ART's random draws.
        batch_size: Samples attacked at once.

    Raises:
        ValueError: The model has fewer than 3 classes (the DLR loss needs a third logit).
    """
    x, y = _float(x), _long(y)
    logits = predict_logits(model, x)
    nb_classes = logits.shape[1]
    if nb_classes < 3:
        raise ValueError(f"APGD-T needs at least 3 classes (DLR loss), the model has {nb_classes}")
    correct = (logits.argmax(1) == y).numpy()
    if eps <= 0:
        return correct
    wrong = logits.clone()
    wrong[torch.arange(len(y)), y] = -torch.inf
    order = wrong.argsort(1, descending=True)[:, : min(targets, nb_classes - 1)].numpy()
    x_np = x.numpy()
    clf = _art_classifier(_DefinedGrad(model), x_np, nb_classes, _clip_values(x_np, eps, domain))
    with seeded_global_rngs(seed):
        attack = _apgd(
            clf, eps, steps, "difference_logits_ratio", targeted=True, batch_size=batch_size
        )
        for k in range(order.shape[1]):
            idx = np.flatnonzero(correct)
            if idx.size == 0:
                break
            x_adv = attack.generate(x_np[idx], y=order[idx, k])
            correct[idx] = _rescore(model, x[idx], y[idx], x_adv, eps, domain)
    return correct


def square_correct(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    domain: Domain = None,
    queries: int = 500,
    seed: int = 0,
    batch_size: int = 128,
) -> np.ndarray:
    """Per-sample correctness under ART's black-box Square attack (Andriushchenko et al. 2020).

    Uses only the model's outputs, so it is blind to gradient masking.

    Args:
        model: A classifier returning logits, in eval mode.
        x: Inputs, float; non-image inputs are shown to ART as a padded square image.
        y: True labels.
        eps: L-inf radius; ``0`` returns clean correctness.
        domain: ``(min, max)`` of valid inputs, or ``None`` (data range widened by eps).
        queries: Iterations (one model query per remaining sample each).
        seed: Seed of ART's random draws.
        batch_size: Samples per model query.
    """
    import_art()
    from art.attacks.evasion import SquareAttack

    x, y = _float(x), _long(y)
    if eps <= 0:
        return predict_correct(model, x, y)
    x_np = x.numpy()
    nb_classes = predict_logits(model, x[:1]).shape[1]
    clip = _clip_values(x_np, eps, domain)
    if x.ndim == 4 and min(x.shape[2:]) >= _SQUARE_MIN_SIDE:
        view = None
        module: nn.Module = _DefinedGrad(model)
        x_art = x_np
    else:
        side = max(_SQUARE_MIN_SIDE, math.ceil(math.sqrt(math.prod(x.shape[1:]))))
        view = _SquareView(model, tuple(x.shape[1:]), side)
        module, x_art = view, view.to_image(x_np)
    clf = _art_classifier(module, x_art, nb_classes, clip)
    with seeded_global_rngs(seed):
        attack = SquareAttack(
            clf,
            norm=np.inf,
            max_iter=queries,
            eps=eps,
            p_init=SQUARE_P_INIT,
            nb_restarts=1,
            batch_size=batch_size,
            verbose=False,
        )
        x_adv = attack.generate(x_art, y=y.numpy())
    if view is not None:
        x_adv = view.from_image(x_adv)
    return _rescore(model, x, y, x_adv, eps, domain)
