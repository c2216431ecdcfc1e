"""The screens' test tables: scikit-learn's digits and breast cancer, as the pipeline reads them."""

from __future__ import annotations

import pytest
from sklearn.datasets import load_breast_cancer, load_digits


@pytest.fixture(scope="module")
def digits():
    """Digits as the pipeline ingests them: ``pixel_<r>_<c>`` floats and an int64 label."""
    frame = load_digits(as_frame=True).frame.rename(columns={"target": "label"})
    frame["label"] = frame["label"].astype("int64")
    return frame


@pytest.fixture(scope="module")
def cancer():
    frame = load_breast_cancer(as_frame=True).frame.rename(columns={"target": "label"})
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame["label"] = frame["label"].astype("int64")
    return frame
