"""label-changed: exact on relabelled earlier rows, also when a pixel or two moved."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from aegis.screens.label_diff import label_changes, row_hashes


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return x.astype(np.float64), y


def _flip(y, rows, classes=10):
    out = y.copy()
    out[rows] = (out[rows] + 1) % classes
    return out


def test_every_relabelled_row_is_found_and_no_other(digits):
    x, y = digits
    rows = np.random.default_rng(0).choice(len(y), 90, replace=False)
    result = label_changes(x, y, x, _flip(y, rows))
    assert sorted(result.flagged.tolist()) == sorted(rows.tolist())
    assert np.all(result.scores[rows] == 1.0) and result.details["matched"] == len(y)
    assert result.per_class[0]["rows"] == int((_flip(y, rows) == 0).sum())


@pytest.mark.parametrize("pixels", [1, 2])
def test_a_flip_plus_changed_pixels_does_not_escape(digits, pixels):
    x, y = digits
    rng = np.random.default_rng(pixels)
    rows = rng.choice(len(y), 90, replace=False)
    moved = x.copy()
    for r in rows:
        moved[r, rng.choice(64, pixels, replace=False)] = rng.integers(0, 17, pixels)
    result = label_changes(x, y, moved, _flip(y, rows), max_changed_features=2)
    assert set(result.flagged.tolist()) == set(rows.tolist())


def test_more_changed_features_than_allowed_is_a_new_row(digits):
    x, y = digits
    moved = x.copy()
    moved[0, :5] += 7.0
    result = label_changes(x, y, moved[:1], _flip(y, [0])[:1], max_changed_features=2)
    assert result.flagged.size == 0 and result.details["matched"] == 0


def test_new_rows_and_unchanged_labels_are_not_flagged(digits):
    x, y = digits
    result = label_changes(x[:900], y[:900], x[900:], y[900:])
    assert result.flagged.size == 0


def test_a_duplicate_row_accepted_under_both_labels_is_not_a_change(digits):
    x, _ = digits
    old_x = np.vstack([x[:1], x[:1]])
    result = label_changes(old_x, np.array([1, 2]), x[:1], np.array([2]))
    assert result.flagged.size == 0


def test_bad_shapes_and_settings_are_refused(digits):
    x, y = digits
    with pytest.raises(ValueError, match="same columns"):
        label_changes(x[:, :10], y, x, y)
    with pytest.raises(ValueError, match="one label per row"):
        label_changes(x, y[:5], x, y)
    with pytest.raises(ValueError, match="non-negative"):
        label_changes(x, y, x, y, neighbours=0)
    empty = label_changes(x[:0], y[:0], x[:3], y[:3])
    assert empty.flagged.size == 0 and len(empty.scores) == 3


def test_row_hashes_are_exact_identities(digits):
    x, _ = digits
    hashes = row_hashes(x[:3])
    assert len(set(hashes)) == 3 and row_hashes(x[:1].astype(np.int64)) == hashes[:1]
    moved = x[:1].copy()
    moved[0, 5] += 1e-9
    assert row_hashes(moved) != hashes[:1]
