"""Feature squeezing (Xu et al. 2018): the gateway's adversarial-input detector.

An input is squeezed (its needless precision removed) and the model asked again; a clean
input gets nearly the same answer, an adversarial one, which relies on small deliberate
changes, often does not. The score of a row is the largest L1 distance, over the
squeezers, between the model's softmax on the input and on its squeezed copy.

The squeezers work in model-input space, as :func:`aegis.train.data.to_tensors` makes it:

- images (``(N, C, H, W)`` in [0, 1]): bit-depth reduction to ``bits`` and a median
  filter of ``median`` x ``median`` pixels (the paper's 2x2; ``0`` or ``1``: none);
- tables (``(N, D)`` standardized): rounding to a grid of ``table_step`` standard
  deviations.

The threshold is calibrated on clean held-out inputs (:func:`calibrate_detector`) and
signed into the evaluation's ``metrics.json``; a row is flagged when its score is strictly
above it. Feature squeezing is a cheap first line against attacks that do not know about
it; an attacker who optimises against the squeezers too can evade it (He et al. 2017).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from aegis.config import SqueezeParams

KINDS = ("image", "tabular")
MAX_BITS = 8
MAX_MEDIAN = 5
# Rows per forward pass: the gateway's requests (<= 256 rows) always go in one pass, and
# calibration on a few thousand rows does not build one huge batch.
_BATCH_ROWS = 512

Squeezer = Callable[[torch.Tensor], torch.Tensor]


def bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Rounds inputs in [0, 1] to ``2**bits`` evenly spaced levels (0 and 1 included)."""
    levels = 2**bits - 1
    return torch.round(x * levels) / levels


@lru_cache(maxsize=64)
def _reflect_index(n: int, before: int, after: int) -> torch.Tensor:
    """Indices of a length-``n`` axis padded by mirroring with the edge repeated.

    ``(d c b a | a b c d | d c b a)``: scipy.ndimage's ``reflect`` mode, which the paper's
    median filter (``scipy.ndimage.median_filter``) uses.
    """
    i = np.arange(-before, n + after)
    period = 2 * n
    i = np.mod(i, period)
    i = np.where(i >= n, period - 1 - i, i)
    return torch.from_numpy(i.astype(np.int64))


def median_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """A ``size`` x ``size`` median filter over each channel of ``(N, C, H, W)`` images.

    As ``scipy.ndimage.median_filter(x, size=(1, 1, size, size))`` computes it: the window
    of pixel ``i`` covers ``i - size // 2`` to ``i + (size - 1) // 2`` (for 2x2: the pixel,
    the one above, to the left and diagonal), borders are mirrored (``reflect``), and an
    even window takes its upper median (rank ``size**2 // 2`` from 0). ``size <= 1`` returns
    ``x`` unchanged.
    """
    if size <= 1:
        return x
    n, c, h, w = x.shape
    before, after = size // 2, (size - 1) // 2
    padded = x.index_select(2, _reflect_index(h, before, after))
    padded = padded.index_select(3, _reflect_index(w, before, after))
    # (N, C * size * size, H * W), channel-major: each column is one pixel's window
    windows = F.unfold(padded, kernel_size=size).view(n, c, size * size, h * w)
    median = windows.kthvalue(size * size // 2 + 1, dim=2).values
    return median.view(n, c, h, w)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def grid(x: torch.Tensor, step: float) -> torch.Tensor:
    """Rounds standardized features to the nearest multiple of ``step`` (standard deviations)."""
    return torch.round(x / step) * step


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class SqueezeDetector:
    """A calibrated feature-squeezing detector; ``metrics.json["detector"]`` holds its fields.

    Attributes:
        kind: ``image`` (bit depth and median filter) or ``tabular`` (grid).
        bits: Bit depth images are reduced to (1-8).
        median: Median filter size for images (0-5; 0 and 1 mean none).
        table_step: Grid of tables, in standard deviations (> 0).
        threshold: Rows scoring strictly above it are flagged (finite, >= 0).

    Raises:
        ValueError: A field is of the wrong type or out of range.
    """

    kind: str
    bits: int = 3
    median: int = 0
    table_step: float = 1.0
    threshold: float

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind must be one of {KINDS}, not {self.kind!r}")
        if not (_integer(self.bits) and 1 <= self.bits <= MAX_BITS):
            problems.append(f"bits must be an integer in 1..{MAX_BITS}, not {self.bits!r}")
        if not (_integer(self.median) and 0 <= self.median <= MAX_MEDIAN):
            problems.append(f"median must be an integer in 0..{MAX_MEDIAN}, not {self.median!r}")
        if not (_number(self.table_step) and self.table_step > 0):
            problems.append(f"table_step must be a finite number > 0, not {self.table_step!r}")
        if not (_number(self.threshold) and self.threshold >= 0):
            problems.append(f"threshold must be a finite number >= 0, not {self.threshold!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def squeezers(self) -> list[Squeezer]:
        """The squeezers of this kind, in the order their scores are maxed over."""
        if self.kind == "tabular":
            return [lambda x: grid(x, self.table_step)]
        out: list[Squeezer] = [lambda x: bit_depth(x, self.bits)]
        if self.median > 1:
            out.append(lambda x: median_filter(x, self.median))
        return out

    def scores(
        self, model: nn.Module, x: torch.Tensor, *, probs: torch.Tensor | np.ndarray | None = None
    ) -> np.ndarray:
        """Per row: the largest L1 distance between the softmax on ``x`` and on a squeezed ``x``.

        The input and all its squeezed copies go through the model in one forward pass (per
        512 rows), without gradients. ``model`` must be in eval mode.

        Args:
            model: The classifier (logits out), as the gateway serves it.
            x: Model inputs, ``(N, C, H, W)`` in [0, 1] or ``(N, D)`` standardized.
            probs: The model's softmax on ``x`` when the caller has it already (the
                gateway's prediction): only the squeezed copies are then run, which
                saves one of the ``1 + len(squeezers)`` rows per input.

        Returns:
            ``(N,)`` float64 scores in [0, 2].
        """
        parts = [score for _, score in self._passes(model, x, probs)]
        if not parts:
            return np.zeros(0, dtype=np.float64)
        return np.concatenate(parts).astype(np.float64)

    def predict(self, model: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The model's softmax on ``x`` and the scores, from one forward pass per 512 rows.

        What the gateway runs: ``x`` and its squeezed copies go through the model
        together, so the prediction costs no separate pass. Returns ``((N, classes)
        float32 probabilities, (N,) float64 scores)``.
        """
        parts = self._passes(model, x, None)
        if not parts:
            return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.float64)
        probs = np.concatenate([base for base, _ in parts])
        return probs, np.concatenate([score for _, score in parts]).astype(np.float64)

    def _passes(self, model: nn.Module, x, probs) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per 512 rows: (softmax on the rows, scores), the softmax from ``probs`` if given.

        Everything after the forward pass is numpy: on the gateway's one-row requests
        each torch call costs microseconds of dispatch, a dozen of them as much as the
        detector's share of the forward pass.
        """
        x = torch.as_tensor(x, dtype=torch.float32)
        given = None if probs is None else np.asarray(probs, dtype=np.float32)
        if given is not None and given.shape[0] != len(x):
            raise ValueError(f"probs has {given.shape[0]} rows for {len(x)} inputs")
        squeezers = self.squeezers()
        parts = []
        for start in range(0, len(x), _BATCH_ROWS):
            rows = x[start : start + _BATCH_ROWS]
            views = [squeeze(rows) for squeeze in squeezers]
            if given is None:
                views.insert(0, rows)
            with torch.no_grad():
                logits = model(torch.cat(views)).numpy()
            out = _softmax(logits).reshape(len(views), len(rows), -1)
            base = out[0] if given is None else given[start : start + _BATCH_ROWS]
            squeezed = out[1:] if given is None else out
            parts.append((base, np.abs(squeezed - base).sum(axis=2).max(axis=0)))
        return parts

    def flags(
        self, model: nn.Module, x: torch.Tensor, *, probs: torch.Tensor | np.ndarray | None = None
    ) -> np.ndarray:
        """Per row: whether its score is strictly above the threshold (bool array)."""
        return self.scores(model, x, probs=probs) > self.threshold

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON values; :meth:`from_json` reads them back exactly."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SqueezeDetector:
        """A detector from :meth:`to_json` output, strictly checked.

        Raises:
            ValueError: ``data`` is not a dict of exactly the fields, or a value is of the
                wrong type, out of range or not finite.
        """
        fields = set(cls.__dataclass_fields__)
        if not isinstance(data, dict) or set(data) != fields:
            keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"a detector has exactly the keys {sorted(fields)}, not {keys}")
        return cls(**data)


def conformal_threshold(scores: np.ndarray, target_fpr: float) -> float:
    """The clean scores' ``(1 - target_fpr)`` quantile, by the split-conformal rank.

    With ``n`` scores sorted ascending, the threshold is the ``k``-th smallest, ``k =
    ceil((1 - target_fpr) * (n + 1))`` capped at ``n``. Flagging ``score > threshold``
    then flags at most ``target_fpr * n`` of these scores, and a new clean input
    exchangeable with them with probability at most ``target_fpr`` (when ``k <= n``; with
    fewer than ``1 / target_fpr - 1`` scores the cap makes it the largest score).

    Raises:
        ValueError: No scores, or ``target_fpr`` outside (0, 1).
    """
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    if scores.size == 0:
        raise ValueError("calibration needs at least one clean input")
    if not 0 < target_fpr < 1:
        raise ValueError(f"target_fpr must lie in (0, 1), not {target_fpr}")
    # the epsilon keeps float rounding ((1 - 0.04) * 181 = 173.76...) from adding a rank
    k = min(math.ceil((1 - target_fpr) * (scores.size + 1) - 1e-9), scores.size)
    return float(scores[k - 1])


def _subset(x: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    if len(x) <= size:
        return x
    rows = np.sort(np.random.default_rng(seed).choice(len(x), size=size, replace=False))
    return x[torch.from_numpy(rows)]


def calibrate_detector(
    model: nn.Module, x_clean: torch.Tensor, *, kind: str, params: SqueezeParams, seed: int = 0
) -> SqueezeDetector:
    """A detector with ``params``' squeezers and its threshold fitted on clean inputs.

    The threshold is :func:`conformal_threshold` of the clean scores at
    ``params.target_fpr``. Of more than ``params.samples`` inputs, a random subset of that
    many (fixed by ``seed``) is used.

    Args:
        model: The classifier, in eval mode.
        x_clean: Clean model inputs the model was not trained on.
        kind: ``image`` or ``tabular`` (the data spec's kind).
        params: ``evaluate.squeeze``.
        seed: Seed of the subset.

    Raises:
        ValueError: No clean inputs, or an unknown ``kind``.
    """
    settings = {"kind": kind, "bits": params.bits, "median": params.median}
    settings["table_step"] = float(params.table_step)
    unfitted = SqueezeDetector(**settings, threshold=0.0)
    scores = unfitted.scores(model, _subset(x_clean, params.samples, seed))
    return SqueezeDetector(**settings, threshold=conformal_threshold(scores, params.target_fpr))


def held_out_detector(
    model: nn.Module,
    *,
    kind: str,
    params: SqueezeParams,
    x_val: torch.Tensor,
    x_test: torch.Tensor,
    seed: int,
) -> dict[str, Any]:
    """Calibrates on clean held-out inputs and measures the false-positive rate on others.

    Calibrates on the validation inputs when there are any (the model never trained on
    them) and measures on every test input; without a validation split, calibrates on a
    random half of the test inputs (fixed by ``seed``) and measures on the other half.

    Returns:
        ``metrics.json["detector"]``: the detector's fields and ``calibrated_on``
        (``validation`` or ``test-half``), ``calibration_rows``, ``test_fpr`` (share of
        the measured test inputs flagged; ``None`` without any) and ``test_rows``.
    """
    if len(x_val):
        calibration, measured, where = x_val, x_test, "validation"
    else:
        order = np.random.default_rng(seed).permutation(len(x_test))
        half = max(len(x_test) // 2, 1)
        pick = [torch.from_numpy(np.sort(part)) for part in (order[:half], order[half:])]
        calibration, measured, where = x_test[pick[0]], x_test[pick[1]], "test-half"
    detector = calibrate_detector(model, calibration, kind=kind, params=params, seed=seed)
    flagged = detector.flags(model, measured)
    return {
        **detector.to_json(),
        "calibrated_on": where,
        "calibration_rows": min(len(calibration), params.samples),
        "test_fpr": round(float(flagged.mean()), 6) if len(flagged) else None,
        "test_rows": len(flagged),
    }
