"""What a data screen reports: which rows it flags, every row's score, and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ScreenResult:
    """One screen's verdict on a table.

    Attributes:
        name: The quarantine reason it gives (``label-changed``, ``label-issue``, ``backdoor``).
        flagged: Positions of the flagged rows in the table screened, ascending (int64).
        scores: Per row, higher is more suspicious (float64, one per row screened).
        threshold: The score above which a row is flagged, when one number decides.
        per_class: Per class label: ``rows``, ``flagged`` and any class-level decision
            and statistics (JSON-able), for the report.
        details: Settings and statistics for the report and the audit (JSON-able).
    """

    name: str
    flagged: np.ndarray
    scores: np.ndarray
    threshold: float | None = None
    per_class: dict[int, dict[str, Any]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        flagged = np.unique(np.asarray(self.flagged, dtype=np.int64))
        object.__setattr__(self, "flagged", flagged)
        object.__setattr__(self, "scores", np.asarray(self.scores, dtype=np.float64))
        if flagged.size and (flagged[0] < 0 or flagged[-1] >= len(self.scores)):
            raise ValueError(f"{self.name}: flagged rows outside the {len(self.scores)} screened")


def per_class_counts(labels: np.ndarray, flagged: np.ndarray) -> dict[int, dict[str, Any]]:
    """``{label: {"rows": n, "flagged": k}}`` for the report."""
    labels = np.asarray(labels)
    mask = np.zeros(len(labels), dtype=bool)
    mask[np.asarray(flagged, dtype=np.int64)] = True
    return {
        int(c): {"rows": int((labels == c).sum()), "flagged": int((mask & (labels == c)).sum())}
        for c in np.unique(labels)
    }
