"""From a validated dataset to tensors: the data spec, the split and the scaling.

The spec (feature columns, classes, image shape, scaling statistics) is
computed from the training split only and saved with the model, so the
evaluator and any later prediction preprocess exactly as training did.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

from aegis.errors import ConfigError, RefusedError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from aegis.config import TrainParams

_PIXEL = re.compile(r"pixel_(\d+)_(\d+)")
STD_FLOOR = 1e-8


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """How rows become model inputs; saved as ``config.json["data"]``.

    Attributes:
        kind: ``image`` (features are ``pixel_<r>_<c>`` of a square grid) or ``tabular``.
        feature_columns: Feature columns in model-input order (row-major for images).
        label_column: The column of integer class ids ``0..classes-1``.
        classes: Number of classes.
        image_shape: ``(C, H, W)`` for images, else None.
        scale: Images are divided by it (the training split's maximum) to lie in [0, 1].
        mean: Per-feature mean of the training split (tabular only).
        std: Per-feature standard deviation of the training split, floored (tabular only).
        low: Per-feature minimum of the training split (tabular only; None in
            checkpoints from before it was recorded): the gateway's input domain.
        high: Per-feature maximum of the training split (tabular only).
    """

    kind: Literal["image", "tabular"]
    feature_columns: tuple[str, ...]
    label_column: str = "label"
    classes: int
    image_shape: tuple[int, int, int] | None = None
    scale: float = 1.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one model input: ``(C, H, W)`` or ``(D,)``."""
        return self.image_shape if self.image_shape else (len(self.feature_columns),)

    def to_json(self) -> dict[str, Any]:
        # low/high only when recorded, so checkpoints without them keep their digest
        bounds = {"low": list(self.low), "high": list(self.high)} if self.low is not None else {}
        return bounds | {
            "kind": self.kind,
            "feature_columns": list(self.feature_columns),
            "label_column": self.label_column,
            "classes": self.classes,
            "image_shape": list(self.image_shape) if self.image_shape else None,
            "scale": self.scale,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DataSpec:
        """Rebuilds a spec from :meth:`to_json` output.

        Raises:
            ValueError: A field is missing, unknown or of the wrong type.
        """
        if not isinstance(data, dict) or set(data) not in (_SPEC_KEYS, _SPEC_KEYS | _BOUNDS):
            raise ValueError(f"data spec must have exactly the keys {sorted(_SPEC_KEYS)}")
        spec = cls(
            kind=data["kind"],
            feature_columns=tuple(data["feature_columns"]),
            label_column=data["label_column"],
            classes=data["classes"],
            image_shape=tuple(data["image_shape"]) if data["image_shape"] else None,
            scale=data["scale"],
            mean=tuple(data["mean"]) if data["mean"] is not None else None,
            std=tuple(data["std"]) if data["std"] is not None else None,
            low=tuple(data["low"]) if "low" in data else None,
            high=tuple(data["high"]) if "high" in data else None,
        )
        _check_spec(spec)
        return spec


_SPEC_KEYS = {"kind", "feature_columns", "label_column", "classes", "image_shape", "scale"} | {
    "mean",
    "std",
}
_BOUNDS = {"low", "high"}


def _check_spec(spec: DataSpec) -> None:
    def ints(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def floats(values: Any) -> bool:
        return all(isinstance(v, int | float) and math.isfinite(v) for v in values)

    n = len(spec.feature_columns)
    ok = (
        spec.kind in ("image", "tabular")
        and n > 0
        and all(isinstance(c, str) for c in spec.feature_columns)
        and isinstance(spec.label_column, str)
        and ints(spec.classes)
        and spec.classes >= 2
        and isinstance(spec.scale, int | float)
        and math.isfinite(spec.scale)
        and spec.scale > 0
    )
    if ok and spec.kind == "image":
        shape = spec.image_shape
        ok = (
            shape is not None
            and len(shape) == 3
            and all(ints(v) and v > 0 for v in shape)
            and math.prod(shape) == n
            and spec.mean is None
            and spec.std is None
        )
    elif ok:
        ok = (
            spec.image_shape is None
            and spec.mean is not None
            and spec.std is not None
            and len(spec.mean) == len(spec.std) == n
            and floats(spec.mean)
            and floats(spec.std)
            and min(spec.std) > 0
        )
    if ok and (spec.low is not None or spec.high is not None):
        ok = (
            spec.kind == "tabular"
            and spec.low is not None
            and spec.high is not None
            and len(spec.low) == len(spec.high) == n
            and floats(spec.low)
            and floats(spec.high)
            and all(lo <= hi for lo, hi in zip(spec.low, spec.high, strict=True))
        )
    if not ok:
        raise ValueError("data spec fields are inconsistent or of the wrong type")


def _image_grid(columns: list[str]) -> tuple[list[str], int] | None:
    """Columns in row-major order and the side, when they are a full square pixel grid."""
    cells = {}
    for column in columns:
        match = _PIXEL.fullmatch(column)
        if match is None:
            return None
        cells[(int(match[1]), int(match[2]))] = column
    side = math.isqrt(len(columns))
    if side * side != len(columns) or set(cells) != {
        (r, c) for r in range(side) for c in range(side)
    }:
        return None
    return [cells[(r, c)] for r in range(side) for c in range(side)], side


def infer_spec(frame: pd.DataFrame, train_rows: np.ndarray, *, label: str = "label") -> DataSpec:
    """The spec of ``frame``, with scaling statistics from ``train_rows`` only.

    Image when every feature is ``pixel_<r>_<c>`` of a full square grid (digits:
    64 columns -> ``(1, 8, 8)``), else tabular.

    Raises:
        ConfigError: No label column, non-numeric features, or labels that are
            not integer class ids ``0..K-1``.
    """
    labels = _labels(frame, label)
    features = [c for c in frame.columns if c != label]
    if not features:
        raise ConfigError("the dataset has no feature columns")
    from pandas.api.types import is_numeric_dtype

    non_numeric = [c for c in features if not is_numeric_dtype(frame[c])]
    if non_numeric:
        raise ConfigError(f"training needs numeric features; not numeric: {non_numeric[:5]}")
    missing = [c for c in features if frame[c].isna().any()]
    if missing:
        raise ConfigError(f"training needs complete rows; missing values in {missing[:5]}")
    classes = max(int(labels.max()) + 1, 2)
    grid = _image_grid(features)
    if grid is not None:
        columns, side = grid
        top = float(frame.iloc[train_rows][columns].to_numpy(dtype=np.float64).max())
        return DataSpec(
            kind="image",
            feature_columns=tuple(columns),
            label_column=label,
            classes=classes,
            image_shape=(1, side, side),
            scale=top if top > 0 else 1.0,
        )
    train = frame.iloc[train_rows][features].to_numpy(dtype=np.float64)
    std = np.maximum(train.std(axis=0), STD_FLOOR)
    return DataSpec(
        kind="tabular",
        feature_columns=tuple(features),
        label_column=label,
        classes=classes,
        mean=tuple(float(v) for v in train.mean(axis=0)),
        std=tuple(float(v) for v in std),
        low=tuple(float(v) for v in train.min(axis=0)),
        high=tuple(float(v) for v in train.max(axis=0)),
    )


def _labels(frame: pd.DataFrame, label: str) -> np.ndarray:
    if label not in frame.columns:
        raise ConfigError(f"the dataset has no '{label}' column")
    from pandas.api.types import is_integer_dtype

    column = frame[label]
    if not is_integer_dtype(column) or column.isna().any() or len(column) == 0 or column.min() < 0:
        raise ConfigError(f"'{label}' must hold integer class ids 0..K-1")
    return column.to_numpy(dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Split:
    """Row positions of the train, validation and test splits (sorted int64 arrays)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int
    test_fraction: float
    val_fraction: float
    test_digest: str

    def to_json(self) -> dict[str, Any]:
        """What ``config.json["split"]`` records: enough to rebuild and check the split."""
        return {
            "seed": self.seed,
            "test_fraction": self.test_fraction,
            "val_fraction": self.val_fraction,
            "test_digest": self.test_digest,
            "rows": len(self.train) + len(self.val) + len(self.test),
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
        }


def positions_digest(rows: np.ndarray) -> str:
    """``sha256:`` over the positions as little-endian int64: names a split exactly."""
    return "sha256:" + hashlib.sha256(np.asarray(rows, dtype="<i8").tobytes()).hexdigest()


def split_rows(
    n: int, *, labels: np.ndarray, seed: int, test_fraction: float, val_fraction: float
) -> Split:
    """A stratified train/val/test split of ``n`` rows, fixed by ``seed``.

    Each class is shuffled on its own and cut by the fractions (rounded), so
    every split keeps the label proportions.

    Raises:
        ConfigError: The training or test split would be empty.
    """
    labels = np.asarray(labels)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} rows")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for value in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == value))
        n_test = round(len(rows) * test_fraction)
        n_val = round(len(rows) * val_fraction)
        parts["test"].append(rows[:n_test])
        parts["val"].append(rows[n_test : n_test + n_val])
        parts["train"].append(rows[n_test + n_val :])
    train, val, test = (
        np.sort(np.concatenate(parts[k])).astype(np.int64) for k in ("train", "val", "test")
    )
    if len(train) == 0 or len(test) == 0:
        raise ConfigError(f"{n} rows are too few for train.test_fraction {test_fraction}")
    return Split(train, val, test, seed, test_fraction, val_fraction, positions_digest(test))


def rebuild_split(frame: pd.DataFrame, recorded: dict[str, Any], *, label: str = "label") -> Split:
    """The split a model was trained with, rebuilt from ``config.json["split"]`` and checked.

    Raises:
        RefusedError: ``split``: ``frame`` does not give the recorded split (other
            rows, other quarantine), so its test rows may have been trained on.
    """
    split = split_rows(
        len(frame),
        labels=_labels(frame, label),
        seed=recorded["seed"],
        test_fraction=recorded["test_fraction"],
        val_fraction=recorded["val_fraction"],
    )
    if len(frame) != recorded["rows"] or split.test_digest != recorded["test_digest"]:
        raise RefusedError(
            "split",
            f"these {len(frame)} rows do not give the recorded test split "
            f"({recorded['rows']} rows, {recorded['test_digest'][:19]})",
        )
    return split


def to_tensors(
    frame: pd.DataFrame, rows: np.ndarray, spec: DataSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs ``(N, C, H, W)`` or ``(N, D)`` (float32) and labels (int64) of ``rows``."""
    import torch

    part = frame.iloc[rows]
    x = part[list(spec.feature_columns)].to_numpy(dtype=np.float64)
    if spec.kind == "image":
        # clipped so clean inputs lie in the [0, 1] domain that attacks are kept in
        x = np.clip(x / spec.scale, 0.0, 1.0).reshape(len(part), *spec.image_shape)
    else:
        x = (x - np.asarray(spec.mean)) / np.asarray(spec.std)
    y = part[spec.label_column].to_numpy().astype(np.int64)
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)


def input_domain(spec: DataSpec, params: TrainParams) -> tuple[float, float] | None:
    """The clip range of model inputs that attacks stay in (None: unbounded).

    Raises:
        ConfigError: An explicit ``train.input_domain`` is empty or not finite.
    """
    domain = params.input_domain
    if domain == "none":
        return None
    if domain == "auto":
        return (0.0, 1.0) if spec.kind == "image" else None
    low, high = float(domain[0]), float(domain[1])
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(f"train.input_domain: [{low}, {high}] is not a range")
    return low, high


class PreparedData(NamedTuple):
    """A frame with its spec and split: what :func:`aegis.train.trainer.train_model` needs."""

    frame: pd.DataFrame
    spec: DataSpec
    split: Split


@dataclass(frozen=True)
class TrainingData:
    """The rows a model may be trained on: a validated version minus its quarantine."""

    name: str
    frame: pd.DataFrame  # index reset: positions are the split's row numbers
    dataset_digest: str
    excluded_rows: int  # quarantined and not released
    released_rows: int  # quarantined but released for this version
    trusted_set: str | None = None  # NAME@digest whose rows were left out (evaluate.trusted_set)
    trusted_excluded: int = 0


def prepare(data: TrainingData | pd.DataFrame, params: TrainParams) -> PreparedData:
    """Splits by ``params`` (seed, fractions) and infers the spec from the training split."""
    frame = data.frame if isinstance(data, TrainingData) else data
    labels = _labels(frame, "label")
    split = split_rows(
        len(frame),
        labels=labels,
        seed=params.seed,
        test_fraction=params.test_fraction,
        val_fraction=params.val_fraction,
    )
    return PreparedData(frame, infer_spec(frame, split.train), split)
