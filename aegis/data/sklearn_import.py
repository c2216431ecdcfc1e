"""Demo datasets from the copies scikit-learn ships (no download)."""

from __future__ import annotations

import re
from pathlib import Path

from aegis.errors import UsageError

DEMO_DATASETS = ("digits", "breast_cancer")


def import_sklearn(name: str, *, out: Path) -> Path:
    """Writes a bundled scikit-learn dataset as ``out/<name>.parquet``.

    Columns are the features (snake_case) and ``label`` (int64).

    Raises:
        UsageError: Unknown dataset, or the output file exists.
    """
    if name not in DEMO_DATASETS:
        raise UsageError(f"unknown demo dataset '{name}' (one of {', '.join(DEMO_DATASETS)})")
    from sklearn import datasets  # slow import, only when used

    loader = datasets.load_digits if name == "digits" else datasets.load_breast_cancer
    bunch = loader(as_frame=True)
    frame = bunch.frame.rename(columns=_snake).rename(columns={"target": "label"})
    frame["label"] = frame["label"].astype("int64")
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{name}.parquet"
    if target.exists():
        raise UsageError(f"{target}: already exists")
    frame.to_parquet(target, index=False)
    return target


def _snake(column: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", column).strip("_").lower()
