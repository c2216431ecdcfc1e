"""The extraction monitor's statistics: PRADA's distance test and an out-of-distribution rate.

A model-extraction attacker asks questions a customer would not:

- **PRADA** (Juuti et al., 2019): for each new query, the L2 distance (in model-input
  units) to the nearest earlier query of the same predicted class. A customer's natural
  inputs give distances that look normally distributed; synthetic queries made by
  perturbing earlier ones (Jacobian augmentation, Papernot et al.) pile up at one small
  distance. The Shapiro-Wilk statistic ``W`` of a client's distances falls below a
  threshold ``delta``. A repeated query (distance 0) teaches an attacker nothing and is
  not counted.
- **Out-of-distribution rate**: a query's Mahalanobis distance on the model's
  penultimate features to the nearest class mean (tied covariance, fitted on the
  training split) above a threshold set on held-out data at a nominal share ``ood_rate``.
  Out-of-domain natural images (the knockoff attacker) are nearly all above it; a
  client's count of such queries is tested against the binomial with ``ood_rate``.

Everything a gateway needs is fitted at evaluation (:func:`calibrate_extraction`) and
signed into ``metrics.json`` (``extraction``); the streams used to set ``delta`` are the
training split's, never the test split the benchmark measures on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

MIN_QUERIES = 20  # the OOD test speaks from this many counted queries
MIN_DISTANCES = 50  # PRADA from this many distances (below, W of natural queries is noisy)
ALPHA = 1e-6  # the OOD rate's binomial tail that flags
WINDOW = 2000  # the last distances tested (Shapiro-Wilk is exact enough up to 5000)
POINTS_PER_CLASS = 1000  # PRADA's growing set, per class: memory per client is bounded
CALIBRATION_STRIDE = 4  # the benign replays are tested at every 4th distance
DELTA_MARGIN = 0.05  # delta sits this far below the lowest W of the calibration streams


@dataclass(frozen=True)
class ExtractionReference:
    """What the monitor compares a client's queries against (``metrics.json["extraction"]``)."""

    means: np.ndarray  # (classes, h) penultimate-feature class means
    precision: np.ndarray  # (h, h) inverse of the tied covariance
    ood_threshold: float
    ood_rate: float
    delta: float
    min_queries: int = MIN_QUERIES
    alpha: float = ALPHA

    def scores(self, model: nn.Module, x: torch.Tensor) -> np.ndarray:
        """Each row's squared Mahalanobis distance to its nearest class mean, on ``model``'s
        penultimate features: the OOD score every consumer of the reference uses."""
        return ood_scores(self.means, self.precision, penultimate(model, x))

    def to_json(self) -> dict[str, Any]:
        return {
            "means": np.round(self.means, 6).tolist(),
            "precision": np.round(self.precision, 6).tolist(),
            "ood_threshold": float(self.ood_threshold),
            "ood_rate": float(self.ood_rate),
            "delta": float(self.delta),
            "min_queries": self.min_queries,
            "alpha": self.alpha,
        }

    @classmethod
    def from_json(cls, data: Any) -> ExtractionReference:
        """Raises ValueError on anything malformed (shapes, types, non-finite numbers)."""
        if not isinstance(data, dict):
            raise ValueError("not an object")
        means = np.asarray(data.get("means"), dtype=np.float64)
        precision = np.asarray(data.get("precision"), dtype=np.float64)
        if means.ndim != 2 or precision.shape != (means.shape[1], means.shape[1]):
            raise ValueError("means and precision do not fit together")
        numbers = [data.get(k) for k in ("ood_threshold", "ood_rate", "delta", "alpha")]
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in numbers):
            raise ValueError("thresholds must be finite numbers")
        if not (np.isfinite(means).all() and np.isfinite(precision).all()):
            raise ValueError("means and precision must be finite")
        min_queries = data.get("min_queries", MIN_QUERIES)
        if not isinstance(min_queries, int) or not 2 < min_queries < 100_000:
            raise ValueError("min_queries must be an integer above 2")
        ood_rate, delta, alpha = float(data["ood_rate"]), float(data["delta"]), data["alpha"]
        if not (0 < ood_rate < 1 and 0 < delta < 1 and 0 < alpha < 1):
            raise ValueError("ood_rate, delta and alpha lie strictly between 0 and 1")
        return cls(
            means, precision, float(data["ood_threshold"]), ood_rate, delta, min_queries,
            float(alpha),
        )  # fmt: skip


def penultimate(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """The last hidden layer's activations (every module but ``out``), float64."""
    with torch.no_grad():
        return torch.cat([model[:-1](chunk) for chunk in x.split(4096)]).double().numpy()


def ood_scores(means: np.ndarray, precision: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of each row to its nearest class mean."""
    diff = features[:, None, :] - means[None, :, :]  # (n, classes, h)
    return np.einsum("nch,hk,nck->nc", diff, precision, diff).min(axis=1)


@dataclass
class KeyState:
    """One client's history, as the monitor keeps it (and the gateway persists it)."""

    queries: int = 0  # rows answered
    counted: int = 0  # rows the OOD test counted (all but exact repeats)
    ood: int = 0  # of those, above the OOD threshold
    distances: list[float] = field(default_factory=list)  # the last WINDOW (PRADA's D)
    points: dict[int, np.ndarray] = field(default_factory=dict)  # PRADA's growing sets G_c
    class_stats: dict[int, list[float]] = field(default_factory=dict)  # c -> [n, sum, sumsq]
    classes_seen: set[int] = field(default_factory=set)
    flagged_at: int | None = None  # ``queries`` when first flagged
    signal: str | None = None  # the test that flagged: prada | ood
    w: float | None = None  # the last Shapiro-Wilk statistic
    ood_p: float | None = None  # the last binomial tail

    def observe(self, x: np.ndarray, labels: np.ndarray, ood: np.ndarray) -> int:
        """Adds answered rows in order: ``x`` (n, d) model inputs, flattened; ``ood`` flags.

        Returns:
            The number of distances added (a repeat or a class's first row adds none).
        """
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1)
        added = 0
        for row, label, far in zip(x, labels.tolist(), ood.tolist(), strict=True):
            self.queries += 1
            self.classes_seen.add(label)
            grown = self.points.get(label)
            if grown is None:
                self.points[label] = row[None, :].copy()
                self.counted += 1
                self.ood += bool(far)
                continue
            d = float(np.sqrt(((grown - row) ** 2).sum(axis=1).min()))
            if d == 0.0:  # a repeat: the same answer again, nothing learned
                continue
            self.counted += 1
            self.ood += bool(far)
            self.distances.append(d)
            added += 1
            if len(self.distances) > WINDOW:
                del self.distances[: len(self.distances) - WINDOW]
            n, s, ss = self.class_stats.setdefault(label, [0.0, 0.0, 0.0])
            mean = s / n if n else 0.0
            std = math.sqrt(max(ss / n - mean * mean, 0.0)) if n else 0.0
            self.class_stats[label] = [n + 1, s + d, ss + d * d]
            # PRADA grows G_c only with queries far from it: the set stays a sparse cover
            if d > mean - std and len(grown) < POINTS_PER_CLASS:
                self.points[label] = np.concatenate([grown, row[None, :]])
        return added

    def observe_checked(
        self, x: np.ndarray, labels: np.ndarray, ood: np.ndarray, ref: ExtractionReference
    ) -> Evidence:
        """:meth:`observe`, testing as the reference was calibrated: every
        ``CALIBRATION_STRIDE``-th distance, not once per batch.

        A batch tested only at its end lets an attack's dip in W pass unseen when benign
        rows follow it in the same flush (the gateway flushes every few seconds): the
        threshold ``delta`` is the lowest W of benign replays tested at this stride.
        """
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1)
        since = 0  # distances added since the last test
        for i in range(len(x)):
            since += self.observe(x[i : i + 1], labels[i : i + 1], ood[i : i + 1])
            if since >= CALIBRATION_STRIDE and self.flagged_at is None:
                since = 0
                self.evidence(ref)
        return self.evidence(ref)

    def evidence(self, ref: ExtractionReference) -> Evidence:
        """Both tests on what has been observed; flags (once, remembered) at score >= 1."""
        from scipy import stats

        prada = ood = 0.0
        if len(self.distances) >= MIN_DISTANCES:
            d = np.asarray(self.distances)
            self.w = 1.0 if np.ptp(d) == 0 else float(stats.shapiro(d).statistic)
            prada = (1.0 - self.w) / (1.0 - ref.delta)
        if self.counted >= ref.min_queries:
            self.ood_p = float(stats.binom.sf(self.ood - 1, self.counted, ref.ood_rate))
            ood = math.log(max(self.ood_p, 1e-300)) / math.log(ref.alpha)
        score = max(prada, ood)
        if score >= 1.0 and self.flagged_at is None:
            self.flagged_at = self.queries
            self.signal = "prada" if prada >= ood else "ood"
        return Evidence(score=round(score, 4), w=self.w, ood_p=self.ood_p,
                        flagged=self.flagged_at is not None)  # fmt: skip


@dataclass(frozen=True)
class Evidence:
    score: float  # max of the two tests' evidence; >= 1 flags
    w: float | None
    ood_p: float | None
    flagged: bool


def benign_streams(n_rows: int, *, streams: int, length: int, seed: int) -> list[np.ndarray]:
    """Row indices of ``streams`` replays of ``n_rows`` rows in random order, ``length`` each."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(streams):
        reps = -(-length // n_rows)
        out.append(np.concatenate([rng.permutation(n_rows) for _ in range(reps)])[:length])
    return out


def lowest_w(x: np.ndarray, labels: np.ndarray, ood: np.ndarray, order: np.ndarray) -> float:
    """The lowest Shapiro-Wilk W a client replaying ``x[order]`` one row at a time shows."""
    from scipy import stats

    state = KeyState()
    low = 1.0
    for i in order:
        before = len(state.distances)
        state.observe(x[i : i + 1], labels[i : i + 1], ood[i : i + 1])
        n = len(state.distances)
        # every few distances: the gateway tests once per flush, and this runs per evaluation
        if n > before and n >= MIN_DISTANCES and n % CALIBRATION_STRIDE == 0:
            low = min(low, float(stats.shapiro(np.asarray(state.distances)).statistic))
    return low


def calibrate_extraction(
    model: nn.Module,
    *,
    x_fit: torch.Tensor,
    y_fit: torch.Tensor,
    x_calib: torch.Tensor,
    ood_rate: float = 0.05,
    streams: int = 10,
    length: int = 1200,
    seed: int = 0,
) -> dict[str, Any]:
    """Fits the monitor's reference on the training split and its thresholds on held-out data.

    Args:
        model: The classifier (an ``nn.Sequential`` whose last module is ``out``), eval mode.
        x_fit: Training inputs: the class means and tied covariance of their features,
            and the benign streams ``delta`` is set on (its lowest W less a margin).
        y_fit: Their labels.
        x_calib: Held-out inputs (the validation split): the OOD threshold is their
            ``1 - ood_rate`` quantile.
        ood_rate: The nominal share of clean queries above the OOD threshold.
        streams, length, seed: The benign replays of ``x_fit`` that set ``delta``.

    Returns:
        ``metrics.json["extraction"]``: the reference and how it was calibrated.
    """
    feats = penultimate(model, x_fit)
    y = y_fit.numpy()
    # the classes the training split holds: one with no rows (a delivery without it) has
    # no mean, and a row's OOD score is its distance to the nearest class that has one
    present, index = np.unique(y, return_inverse=True)
    means = np.stack([feats[y == c].mean(axis=0) for c in present])
    centered = feats - means[index]
    cov = centered.T @ centered / max(len(feats) - len(present), 1)
    cov += np.eye(len(cov)) * (1e-3 * float(np.trace(cov)) / len(cov) + 1e-9)  # dead units
    precision = np.linalg.inv(cov)
    calib_scores = ood_scores(means, precision, penultimate(model, x_calib))
    threshold = float(np.quantile(calib_scores, 1 - ood_rate))
    with torch.no_grad():
        labels = torch.cat([model(c) for c in x_fit.split(4096)]).argmax(1).numpy()
    flat = x_fit.reshape(len(x_fit), -1).numpy()
    far = ood_scores(means, precision, feats) > threshold
    lows = [
        lowest_w(flat, labels, far, order)
        for order in benign_streams(len(flat), streams=streams, length=length, seed=seed)
    ]
    ref = ExtractionReference(
        means, precision, threshold, ood_rate, delta=max(min(lows) - DELTA_MARGIN, 0.01)
    )
    return {
        **ref.to_json(),
        "calibrated_on": {
            "fit": "train", "fit_rows": len(flat), "ood_threshold": "validation",
            "ood_rows": len(x_calib), "delta_streams": streams, "stream_length": length,
            "lowest_w": round(min(lows), 6),
        },
    }  # fmt: skip
