"""Our own model-extraction attacker: queries a model, trains a copy, measures agreement.

Three ways to choose queries (``kind``):

- ``natural``: rows of the attacker's in-distribution pool (public data like the
  victim's), without repeats;
- ``jacobian``: Papernot et al.'s Jacobian-based augmentation: a seed set of the pool,
  then rounds that add ``x + lam * range * sign(d F_y(x) / d x)`` of the current
  substitute for every point so far (the set doubles each round);
- ``knockoff``: out-of-domain natural images (crops of scikit-learn's bundled sample
  photographs, grey, averaged down to the victim's image size and stretched to its pixel
  range), as Orekondy et al.'s Knockoff Nets query with images of another domain.

The oracle is any ``rows -> labels`` function: the gateway over HTTP
(:class:`aegis.attack.oracle.HttpOracle`) for ``aegis attack extract``, a local model in
the benchmark. The attacker's settings are fixed here and reported with every run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from aegis.attack.surrogate import Surrogate, fit_surrogate, gradient_signs, image_side

KINDS = ("jacobian", "knockoff", "natural")
Oracle = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class JacobianSettings:
    """Fixed before any measurement (Papernot et al. use lam 0.1 on [0, 1] pixels)."""

    seed_size: int = 20  # pool rows the attack starts from
    lam: float = 0.1  # step, as a share of each feature's pool range
    substitute: str = "mlp"  # the differentiable copy the augmentation follows


@dataclass
class ExtractionRun:
    """What one attack asked, was told, and learned."""

    kind: str
    rows: np.ndarray  # every query, dataset units, in the order asked
    labels: np.ndarray  # the victim's answers
    surrogate: Surrogate
    rounds: int = 1
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def queries(self) -> int:
        return len(self.rows)


def public_pool(features: int) -> np.ndarray:
    """The attacker's public data for a model of ``features`` inputs, shuffled (fixed seed).

    Raises:
        ValueError: No bundled dataset has that many features.
    """
    from sklearn import datasets

    loaders = {64: datasets.load_digits, 30: datasets.load_breast_cancer}
    if features not in loaders:
        raise ValueError(
            f"no public pool for a model of {features} features (digits: 64, breast_cancer: 30)"
        )
    x = loaders[features]().data.astype(np.float64)
    return x[np.random.default_rng(12345).permutation(len(x))]


def knockoff_rows(n: int, *, features: int, low: float, high: float, seed: int) -> np.ndarray:
    """``n`` out-of-domain images: crops of the bundled sample photographs.

    Raises:
        ValueError: The victim's rows are not square images.
    """
    from sklearn.datasets import load_sample_images

    side = image_side(features)
    if side is None:
        raise ValueError("the knockoff attacker queries images: the model's rows are not square")
    rng = np.random.default_rng(seed)
    photos = [img.mean(axis=2) for img in load_sample_images().images]  # grey
    out = np.empty((n, side * side))
    for i in range(n):
        photo = photos[rng.integers(len(photos))]
        k = int(rng.integers(4, min(photo.shape) // side + 1))  # crop side*k pixels
        top = rng.integers(photo.shape[0] - side * k + 1)
        left = rng.integers(photo.shape[1] - side * k + 1)
        crop = photo[top : top + side * k, left : left + side * k]
        small = crop.reshape(side, k, side, k).mean(axis=(1, 3))
        if rng.random() < 0.5:
            small = small[:, ::-1]
        span = np.ptp(small) or 1.0
        out[i] = (low + (small - small.min()) / span * (high - low)).ravel()
    return out


def extract(
    kind: str,
    oracle: Oracle,
    *,
    queries: int,
    pool: np.ndarray,
    classes: int,
    family: str = "mlp",
    seed: int = 0,
    jacobian: JacobianSettings = JacobianSettings(),
    progress: Callable[[str], None] = lambda _: None,
) -> ExtractionRun:
    """Runs one attack of ``queries`` questions and fits a ``family`` surrogate.

    Args:
        kind: ``natural``, ``jacobian`` or ``knockoff``.
        oracle: Answers rows with labels (the victim).
        queries: The query budget (rows).
        pool: The attacker's own in-distribution rows (dataset units): what ``natural``
            asks, ``jacobian``'s seed set; its range bounds every query.
        classes: The victim's number of classes.
        family: The surrogate trained on the answers (``mlp``, ``cnn``, ``logreg``, ``forest``).
        seed: Fixes every random choice.
        jacobian: ``jacobian``'s settings.
        progress: Called with one line per round.

    Raises:
        ValueError: Unknown kind, a budget below 1, a pool too small, or a surrogate
            family the rows do not fit.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown attack kind '{kind}' (one of {', '.join(KINDS)})")
    if queries < 1:
        raise ValueError("the query budget must be at least 1")
    rng = np.random.default_rng(seed)
    low, high = pool.min(axis=0), pool.max(axis=0)
    settings: dict[str, Any] = {"queries": queries, "seed": seed, "family": family}
    if kind == "natural":
        if queries > len(pool):
            raise ValueError(f"the pool holds {len(pool)} rows, fewer than {queries} queries")
        rows = pool[rng.choice(len(pool), size=queries, replace=False)]
        labels = oracle(rows)
        rounds = 1
    elif kind == "knockoff":
        rows = knockoff_rows(queries, features=pool.shape[1], low=float(low.min()),
                             high=float(high.max()), seed=seed)  # fmt: skip
        labels = oracle(rows)
        rounds = 1
    else:
        settings |= asdict(jacobian)
        rows, labels, rounds = _jacobian(oracle, queries, pool, classes, jacobian, rng, progress)
    progress(f"{kind}: {len(rows)} queries asked; training a {family} surrogate")
    surrogate = fit_surrogate(family, rows, labels, classes=classes, seed=seed)
    return ExtractionRun(kind, rows, labels, surrogate, rounds, settings)


def _jacobian(oracle, queries, pool, classes, settings, rng, progress):
    size = min(settings.seed_size, queries, len(pool))
    rows = pool[rng.choice(len(pool), size=size, replace=False)]
    labels = oracle(rows)
    low, high = pool.min(axis=0), pool.max(axis=0)
    step = settings.lam * np.where(high > low, high - low, 1.0)
    rounds = 1
    while len(rows) < queries:
        substitute = fit_surrogate(settings.substitute, rows, labels, classes=classes,
                                   seed=int(rng.integers(1 << 31)))  # fmt: skip
        signs = gradient_signs(substitute, rows, labels)
        new = np.clip(rows + step * signs, low, high)[: queries - len(rows)]
        rows = np.concatenate([rows, new])
        labels = np.concatenate([labels, oracle(new)])
        rounds += 1
        progress(f"jacobian: round {rounds}, {len(rows)} queries")
    return rows, labels, rounds


def agreement(surrogate: Surrogate, rows: np.ndarray, victim_labels: np.ndarray) -> float:
    """Share of ``rows`` on which the surrogate answers what the victim answered."""
    return float((surrogate.predict(rows) == victim_labels).mean())
