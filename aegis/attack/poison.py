"""Poisoning our own data: the attacks the screens are measured against (no workspace here).

Each attack takes a clean table (features + ``label``) and returns a
poisoned copy and the ground truth: the row positions it touched, which are
the ids the quarantine reports (``_aegis_row``), so the two compare directly.

- ``flip``: a share ``rate`` of all rows gets a random other label;
- ``pair``: a share ``rate`` of class ``source`` is relabelled ``target``;
- ``boundary``: the ``rate`` share of rows closest to a reference model's
  decision boundary is relabelled to its runner-up class (the flips a
  model-based screen finds hardest);
- ``badnets``: a share ``rate`` of rows of other classes gets the trigger
  (a 2x2 patch at full intensity in the bottom-right corner of an image, a
  fixed out-of-range value on three features of a table) and the label ``target``;
- ``clean-label``: the trigger on a share ``rate`` of rows, all of class
  ``target``, labels unchanged (no label is wrong, so label screens cannot see it);
- ``ood``: ``rate`` x rows of out-of-distribution rows (uniform noise images,
  far-off table rows) with random labels, appended after the clean rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from aegis.errors import UsageError
from aegis.screens.table import LABEL, feature_columns, image_side

__all__ = ["KINDS", "Poisoned", "apply_trigger", "feature_columns", "image_side", "poison"]

Kind = Literal["flip", "pair", "boundary", "badnets", "clean-label", "ood"]
KINDS: tuple[str, ...] = ("flip", "pair", "boundary", "badnets", "clean-label", "ood")
PATCH = 2  # BadNets trigger side on images (pixels)
TABLE_TRIGGER_FEATURES = 3  # features set by the table trigger
TABLE_TRIGGER_SIGMAS = 4.0  # the table trigger's value: mean + this many standard deviations


@dataclass(frozen=True)
class Poisoned:
    """A poisoned table and what was done to it.

    Attributes:
        frame: The poisoned rows (clean rows keep their position).
        rows: Positions of the poisoned rows in ``frame``, ascending.
        labels: Per poisoned row, its label before the attack (None for injected rows).
        details: Attack parameters a benchmark needs to evaluate it (target, trigger).
    """

    frame: Any
    rows: list[int]
    labels: dict[int, int | None]
    details: dict[str, Any] = field(default_factory=dict)


def trigger_spec(frame) -> dict[str, Any]:
    """The BadNets trigger for this table: which columns get which value.

    Images: the bottom-right ``PATCH`` x ``PATCH`` pixels at the table's maximum
    intensity. Tables: the last ``TABLE_TRIGGER_FEATURES`` features at mean +
    ``TABLE_TRIGGER_SIGMAS`` standard deviations (a pattern no clean row shows).
    """
    columns = feature_columns(frame)
    side = image_side(columns)
    if side is not None:
        top = float(frame[columns].to_numpy(dtype=np.float64).max())
        cells = [f"pixel_{r}_{c}" for r in range(side - PATCH, side)
                 for c in range(side - PATCH, side)]  # fmt: skip
        return {"kind": "patch", "columns": cells, "values": [top] * len(cells)}
    chosen = columns[-TABLE_TRIGGER_FEATURES:]
    values = frame[chosen].to_numpy(dtype=np.float64)
    shift = values.mean(axis=0) + TABLE_TRIGGER_SIGMAS * values.std(axis=0)
    return {"kind": "pattern", "columns": chosen, "values": [float(v) for v in shift]}


def apply_trigger(frame, trigger: dict[str, Any], rows=None):
    """A copy of ``frame`` with the trigger set on ``rows`` (all rows when None)."""
    out = frame.copy()
    index = out.index if rows is None else out.index[np.asarray(rows, dtype=np.int64)]
    for column, value in zip(trigger["columns"], trigger["values"], strict=True):
        out.loc[index, column] = np.asarray(value).astype(out[column].dtype)
    return out


def _count(rate: float, n: int) -> int:
    if not 0 < rate <= 1 or not math.isfinite(rate):
        raise UsageError(f"--rate {rate}: must be in (0, 1]")
    count = round(rate * n)
    if count < 1:
        raise UsageError(f"--rate {rate} poisons no row of {n}")
    return count


def _classes(frame) -> np.ndarray:
    return np.unique(frame[LABEL].to_numpy())


def _check_class(value: int | None, classes: np.ndarray, option: str) -> int:
    if value is None:
        raise UsageError(f"this attack needs {option}")
    if value not in set(classes.tolist()):
        raise UsageError(f"{option} {value}: not a class of the dataset ({classes.tolist()})")
    return int(value)


def _relabel(frame, rows: np.ndarray, new: np.ndarray, details: dict[str, Any]) -> Poisoned:
    out = frame.copy()
    before = out[LABEL].to_numpy()[rows]
    out.loc[out.index[rows], LABEL] = new.astype(out[LABEL].dtype)
    order = np.argsort(rows)
    return Poisoned(
        out,
        [int(r) for r in rows[order]],
        {int(r): int(b) for r, b in zip(rows[order], before[order], strict=True)},
        details,
    )


def _flip(frame, rate: float, rng: np.random.Generator) -> Poisoned:
    labels = frame[LABEL].to_numpy()
    classes = _classes(frame)
    rows = rng.choice(len(frame), size=_count(rate, len(frame)), replace=False)
    new = np.array([rng.choice(classes[classes != labels[r]]) for r in rows])
    return _relabel(frame, rows, new, {})


def _pair(frame, rate: float, rng, source: int | None, target: int | None) -> Poisoned:
    classes = _classes(frame)
    a = _check_class(source, classes, "--from")
    b = _check_class(target, classes, "--to")
    if a == b:
        raise UsageError("--from and --to name the same class")
    members = np.flatnonzero(frame[LABEL].to_numpy() == a)
    rows = rng.choice(members, size=_count(rate, len(members)), replace=False)
    return _relabel(frame, rows, np.full(len(rows), b), {"from": a, "to": b})


def _boundary(frame, rate: float, seed: int) -> Poisoned:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = frame[feature_columns(frame)].to_numpy(dtype=np.float64)
    y = frame[LABEL].to_numpy()
    reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    # out-of-fold: the reference model's view of rows it did not fit, as an attacker's would be
    probs = cross_val_predict(reference, x, y, cv=5, method="predict_proba")
    classes = _classes(frame)
    own = np.searchsorted(classes, y)
    own_p = probs[np.arange(len(y)), own]
    rival = probs.copy()
    rival[np.arange(len(y)), own] = -1.0
    runner_up = rival.argmax(axis=1)
    margin = own_p - rival.max(axis=1)
    # ties broken by a seeded permutation, so the seed still decides among equal margins
    perm = np.random.default_rng(seed).permutation(len(y))
    order = perm[np.argsort(margin[perm], kind="stable")]
    rows = order[: _count(rate, len(frame))]
    return _relabel(frame, rows, classes[runner_up[rows]], {"reference": "logistic-regression"})


def _badnets(frame, rate: float, rng, target: int | None, *, clean_label: bool) -> Poisoned:
    classes = _classes(frame)
    target = _check_class(0 if target is None else target, classes, "--to")
    labels = frame[LABEL].to_numpy()
    pool = np.flatnonzero(labels == target) if clean_label else np.flatnonzero(labels != target)
    count = _count(rate, len(frame))
    if count > len(pool):
        raise UsageError(f"--rate {rate}: {count} rows wanted, only {len(pool)} can carry it")
    rows = np.sort(rng.choice(pool, size=count, replace=False))
    trigger = trigger_spec(frame)
    out = apply_trigger(frame, trigger, rows)
    out.loc[out.index[rows], LABEL] = np.asarray(target).astype(out[LABEL].dtype)
    return Poisoned(
        out,
        [int(r) for r in rows],
        {int(r): int(labels[r]) for r in rows},
        {"target": target, "trigger": trigger},
    )


def _ood(frame, rate: float, rng) -> Poisoned:
    import pandas as pd

    columns = feature_columns(frame)
    x = frame[columns].to_numpy(dtype=np.float64)
    count = _count(rate, len(frame))
    if image_side(columns) is not None:
        fake = rng.uniform(0, x.max(), size=(count, len(columns)))
    else:
        signs = rng.choice([-1.0, 1.0], size=(count, len(columns)))
        fake = x.mean(axis=0) + signs * (6 + rng.uniform(0, 2, size=signs.shape)) * x.std(axis=0)
    injected = pd.DataFrame(fake, columns=columns)
    for column in columns:  # keep the schema: integer pixels stay integers
        injected[column] = injected[column].astype(frame[column].dtype)
    injected[LABEL] = rng.choice(_classes(frame), size=count).astype(frame[LABEL].dtype)
    out = pd.concat([frame, injected[frame.columns]], ignore_index=True)
    rows = list(range(len(frame), len(out)))
    return Poisoned(out, rows, dict.fromkeys(rows), {})


def poison(
    frame,
    *,
    kind: str,
    rate: float,
    seed: int = 0,
    source: int | None = None,
    target: int | None = None,
) -> Poisoned:
    """Poisons a clean table; see the module docstring for each ``kind``.

    Args:
        frame: Features and an integer ``label`` column.
        kind: One of :data:`KINDS`.
        rate: The share poisoned (of all rows; of class ``source`` for ``pair``).
        seed: Decides which rows (and labels) the attack picks.
        source: ``pair``: the class relabelled.
        target: ``pair``: its new label; ``badnets`` / ``clean-label``: the target class
            (default 0).

    Raises:
        UsageError: Unknown kind, a rate that poisons nothing, or missing or unknown classes.
    """
    if kind not in KINDS:
        raise UsageError(f"--kind {kind!r}: one of {', '.join(KINDS)}")
    if LABEL not in frame.columns or not feature_columns(frame):
        raise UsageError("the source needs feature columns and a 'label' column")
    frame = frame.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    if kind == "flip":
        return _flip(frame, rate, rng)
    if kind == "pair":
        return _pair(frame, rate, rng, source, target)
    if kind == "boundary":
        return _boundary(frame, rate, seed)
    if kind in ("badnets", "clean-label"):
        return _badnets(frame, rate, rng, target, clean_label=kind == "clean-label")
    return _ood(frame, rate, rng)
