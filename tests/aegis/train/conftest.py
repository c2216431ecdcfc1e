"""Real small data for the training tests: scikit-learn's bundled digits and breast_cancer."""

from __future__ import annotations

import pandas as pd
import pytest

from aegis.config import ModelParams, TrainParams
from aegis.train.data import TrainingData

PIXELS = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
# Small enough that a training epoch on a slice takes a fraction of a second.
SMALL_MODEL = ModelParams(channels=[4, 8], hidden=[32])


@pytest.fixture(scope="session")
def digits() -> pd.DataFrame:
    """All 1797 digits as the workspace stores them: pixel_<r>_<c> (0..16) and label."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    frame = pd.DataFrame(bunch.data, columns=PIXELS)
    frame["label"] = bunch.target.astype("int64")
    return frame


@pytest.fixture(scope="session")
def cancer() -> pd.DataFrame:
    """breast_cancer (569 rows, 30 features, labels 0/1)."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.rename(columns=lambda c: c.replace(" ", "_")).rename(
        columns={"target": "label"}
    )
    frame["label"] = frame["label"].astype("int64")
    return frame


def _training_data(frame: pd.DataFrame, rows: int | None = None) -> TrainingData:
    part = frame.iloc[:rows].reset_index(drop=True) if rows else frame
    return TrainingData("test", part, "sha256:" + "0" * 64, 0, 0)


def _small_params(**overrides) -> TrainParams:
    base = dict(
        epochs=1, batch_size=64, lr=0.01, optimizer="adam", model=SMALL_MODEL, defense="none",
        threads=1,
    )  # fmt: skip
    return TrainParams(**{**base, **overrides})


@pytest.fixture(scope="session")
def as_data():
    """``as_data(frame, rows=None)``: the first rows as TrainingData (as load_training_frame)."""
    return _training_data


@pytest.fixture(scope="session")
def small_params():
    """``small_params(**overrides)``: fast params (small model, one epoch, Adam, one thread)."""
    return _small_params
