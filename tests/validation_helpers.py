"""Real demo data, altered the ways validation must notice (importable as ``validation_helpers``).

Frames come from the Parquet files the fixtures already wrote (digits in
``env.raw``) or from scikit-learn's bundled copy; a changed frame is signed
by the env's supplier as a new (newer) dataset version.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
from helpers import Env

from aegis.data.ingest import ingest
from aegis.data.publish import publish_dataset
from aegis.data.sklearn_import import import_sklearn
from aegis.pipeline.stages import push_stage
from aegis.pipeline.validate import record_validation, validate_dataset

# A digits pixel whose suite range is 0..16: 99 fails expect_column_values_to_be_between.
BAD_PIXEL = "pixel_0_3"


def digits_frame(env: Env) -> pd.DataFrame:
    """The pristine digits rows (1797 x 65) that env.dataset was published from."""
    return pd.read_parquet(env.raw / "digits.parquet")


def sklearn_frame(name: str, tmp: Path) -> pd.DataFrame:
    """A demo dataset as ``aegis data import-sklearn`` writes it."""
    return pd.read_parquet(import_sklearn(name, out=tmp / f"sk-{name}"))


def publish_frame(env: Env, frame: pd.DataFrame, out: str, *, name: str = "digits") -> Path:
    """Signs ``frame`` with the env's supplier as ``<name>.parquet`` in a new dataset dir."""
    raw = env.root.parent / f"{out}-raw"
    raw.mkdir()
    frame.to_parquet(raw / f"{name}.parquet", index=False)
    target = env.root.parent / out
    publish_dataset(raw, name=name, key_path=env.supplier_key, out=target)
    return target


def corrupt(frame: pd.DataFrame, rows: list[int]) -> pd.DataFrame:
    """A copy with ``BAD_PIXEL`` out of range in ``rows`` (row-level failures only)."""
    out = frame.copy()
    out.loc[rows, BAD_PIXEL] = 99.0
    return out


def skewed(frame: pd.DataFrame) -> pd.DataFrame:
    """Only the digits 0-4 (a label shift that also moves the pixel distributions)."""
    return frame[frame["label"] < 5].reset_index(drop=True)


def resample(frame: pd.DataFrame, *, seed: int = 7, fraction: float = 0.8) -> pd.DataFrame:
    """A random sample of the same rows, without replacement (no duplicate rows to quarantine)."""
    return frame.sample(frac=fraction, replace=False, random_state=seed).reset_index(drop=True)


def bootstrap(frame: pd.DataFrame, *, seed: int = 7) -> pd.DataFrame:
    """A bootstrap resample: as many rows, drawn with replacement."""
    rng = np.random.default_rng(seed)
    return frame.iloc[rng.integers(0, len(frame), len(frame))].reset_index(drop=True)


def sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def git_status(root: Path) -> str:
    """``git status --porcelain`` (untracked files included): empty when all is committed."""
    return subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def ingest_digits(env: Env, source: Path) -> str:
    """Ingests ``source`` as digits (acting as the pipeline); returns the dataset digest."""
    ledger = env.ledger()
    actor, _ = ledger.actor(None)
    return ingest(ledger, str(source), name="digits", actor=actor).digest


def validate_digits(env: Env) -> None:
    """Validates the stored digits, records the stage and pushes it, as `aegis validate` does."""
    ledger = env.ledger()
    actor, _ = ledger.actor(None)
    record_validation(ledger, validate_dataset(ledger, "digits", actor=actor))
    push_stage(env.ws, "validate@digits")
