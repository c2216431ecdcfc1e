"""``label-changed``: rows an earlier accepted version holds with another label.

The one screen an adversarial relabelling cannot evade: a row the pipeline
already accepted (and trained on) under one label comes back under another.
Matching is exact per feature within ``tolerance``, except that up to
``max_changed_features`` features may differ by any amount, so an attacker
who flips a label and nudges a pixel is still caught. Candidates are the
``neighbours`` nearest earlier rows (Euclidean, after scaling each feature by
the earlier version's spread, floored at its median); a row moved far in many features is a new row.

Rows are compared as float64 feature vectors; :func:`row_hashes` gives the
exact hash of each (what the trusted set's exclusion from training uses).
"""

from __future__ import annotations

import hashlib

import numpy as np

from aegis.screens.result import ScreenResult, per_class_counts

NAME = "label-changed"


def row_hashes(x: np.ndarray) -> list[str]:
    """SHA-256 of each row's features as little-endian float64 (exact identity of a row)."""
    x = np.ascontiguousarray(np.asarray(x, dtype="<f8"))
    return [hashlib.sha256(row.tobytes()).hexdigest() for row in x]


def _candidates(old: np.ndarray, new: np.ndarray, k: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    # floored at the median spread: a near-constant feature (a border pixel) changed by an
    # attacker must not push the true row out of the candidates
    spread = old.std(axis=0)
    floor = np.median(spread[spread > 0]) if (spread > 0).any() else 1.0
    spread = np.maximum(spread, floor)
    k = min(k, len(old))
    index = NearestNeighbors(n_neighbors=k).fit(old / spread)
    return index.kneighbors(new / spread, return_distance=False)


def label_changes(
    old_x: np.ndarray,
    old_y: np.ndarray,
    new_x: np.ndarray,
    new_y: np.ndarray,
    *,
    max_changed_features: int = 2,
    tolerance: float = 0.0,
    neighbours: int = 8,
) -> ScreenResult:
    """Flags rows of the new version that match an earlier row under another label.

    Args:
        old_x: Features of the earlier accepted rows (n_old, d).
        old_y: Their labels.
        new_x: Features of the rows screened (n, d), same columns in the same order.
        new_y: Their labels.
        max_changed_features: Features that may differ (beyond ``tolerance``) for two
            rows to still be the same row.
        tolerance: Absolute difference per feature that counts as equal.
        neighbours: Nearest earlier rows checked per row.

    Returns:
        The screen's result; a flagged row's score is 1 minus the share of the
        allowed features that differ (1.0: the exact row), others score 0.
        ``details["matched"]`` counts rows that match an earlier row at all.

    Raises:
        ValueError: Shapes that do not line up, or negative settings.
    """
    old_x, new_x = np.asarray(old_x, dtype=np.float64), np.asarray(new_x, dtype=np.float64)
    old_y, new_y = np.asarray(old_y), np.asarray(new_y)
    if old_x.ndim != 2 or new_x.ndim != 2 or old_x.shape[1] != new_x.shape[1]:
        raise ValueError("label diff needs two feature matrices with the same columns")
    if len(old_x) != len(old_y) or len(new_x) != len(new_y):
        raise ValueError("label diff needs one label per row")
    if max_changed_features < 0 or tolerance < 0 or neighbours < 1:
        raise ValueError("label diff settings must be non-negative (neighbours >= 1)")
    scores = np.zeros(len(new_x))
    matched = np.zeros(len(new_x), dtype=bool)
    if len(old_x) and len(new_x):
        candidates = _candidates(old_x, new_x, neighbours)
        differing = (np.abs(old_x[candidates] - new_x[:, None, :]) > tolerance).sum(axis=2)
        same = differing <= max_changed_features  # (n, k): which candidates are this row
        matched = same.any(axis=1)
        agrees = (same & (old_y[candidates] == new_y[:, None])).any(axis=1)
        changed = matched & ~agrees
        fewest = np.where(same, differing, np.iinfo(np.int64).max).min(axis=1)
        scores[changed] = 1.0 - fewest[changed] / (max_changed_features + 1)
    flagged = np.flatnonzero(scores > 0)
    return ScreenResult(
        name=NAME,
        flagged=flagged,
        scores=scores,
        threshold=0.0,
        per_class=per_class_counts(new_y, flagged),
        details={
            "reference_rows": len(old_x),
            "matched": int(matched.sum()),
            "max_changed_features": max_changed_features,
            "tolerance": tolerance,
            "neighbours": neighbours,
        },
    )
