"""Expected calibration error (ECE) and the data of a reliability diagram.

Confidence is the top-class probability; bins are equal-width on [0, 1], right-closed
(``(lo, hi]``) with the first bin also holding confidence 0 (Guo et al. 2017).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CalibrationReport:
    """ECE and the reliability diagram.

    Attributes:
        ece: Sum over bins of ``count / n * |accuracy - confidence|``.
        edges: ``bins + 1`` bin edges from 0 to 1.
        confidence: Mean confidence per bin (``None`` for an empty bin).
        accuracy: Accuracy per bin (``None`` for an empty bin).
        count: Samples per bin.
    """

    ece: float
    edges: list[float]
    confidence: list[float | None]
    accuracy: list[float | None]
    count: list[int]

    def to_dict(self) -> dict:
        """JSON-able reliability-diagram data."""
        return {
            "ece": self.ece,
            "edges": self.edges,
            "confidence": self.confidence,
            "accuracy": self.accuracy,
            "count": self.count,
        }


def calibration(confidence: np.ndarray, correct: np.ndarray, *, bins: int) -> CalibrationReport:
    """ECE and reliability data from per-sample confidence and correctness.

    Args:
        confidence: Predicted probability of the predicted class, in [0, 1].
        correct: Whether the prediction was right.
        bins: Number of equal-width bins.

    Raises:
        ValueError: Empty or mismatched inputs, confidences outside [0, 1], or ``bins < 1``.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if confidence.ndim != 1 or confidence.shape != correct.shape or confidence.size == 0:
        raise ValueError("confidence and correct must be non-empty 1-D arrays of equal length")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if not np.all((confidence >= 0) & (confidence <= 1)):
        raise ValueError("confidence must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, bins + 1)
    # right=True puts c in bin i when edges[i] < c <= edges[i+1]; 0 falls into bin 0.
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    acc_sum = np.bincount(index, weights=correct.astype(np.float64), minlength=bins)
    filled = count > 0
    mean_conf = np.divide(conf_sum, count, out=np.zeros(bins), where=filled)
    mean_acc = np.divide(acc_sum, count, out=np.zeros(bins), where=filled)
    ece = float(np.sum(count / confidence.size * np.abs(mean_acc - mean_conf)))
    return CalibrationReport(
        ece=ece,
        edges=[float(e) for e in edges],
        confidence=[float(c) if f else None for c, f in zip(mean_conf, filled, strict=True)],
        accuracy=[float(a) if f else None for a, f in zip(mean_acc, filled, strict=True)],
        count=[int(c) for c in count],
    )


def calibration_from_probs(
    probs: np.ndarray, labels: np.ndarray, *, bins: int
) -> CalibrationReport:
    """ECE and reliability data from class probabilities ``(n, classes)`` and true labels."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    return calibration(probs.max(axis=1), probs.argmax(axis=1) == labels, bins=bins)
