"""The trusted set: an earlier-accepted dataset the model is measured on, never trained on.

A delivery that poisons both its train and its test rows would vouch for
itself on its own split. ``evaluate.trusted_set: NAME@sha256:<digest>`` names
an accepted, validated version (bound by its manifest digest, so a new
delivery under NAME cannot replace it); its accepted rows are read from the
row index its validation audited (:mod:`aegis.pipeline.screen`). Training
leaves out every row whose features equal a trusted row (by feature hash),
and evaluation and the promotion gates measure on it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aegis.errors import ConfigError, RefusedError
from aegis.ledger import Action, Ledger
from aegis.pipeline.screen import read_row_index
from aegis.screens.label_diff import row_hashes
from aegis.screens.table import feature_columns


@dataclass(frozen=True)
class TrustedSet:
    """The rows of a trusted set and their feature hashes."""

    ref: str  # NAME@sha256:...
    name: str
    digest: str
    frame: Any  # pandas.DataFrame: features and label
    hashes: frozenset[str]


def load_trusted(ledger: Ledger, ref: str) -> TrustedSet:
    """The trusted set ``ref`` (``NAME@sha256:<manifest digest>``), verified.

    Raises:
        RefusedError: ``trusted-set``: never accepted or validated, or validated
            without a row index; its row index missing or altered.
    """
    name, digest = ref.split("@", 1)
    accepted = ledger.accepted(digest)
    if accepted is None or accepted.name != name:
        raise RefusedError("trusted-set", f"{ref} is not a dataset version ingest accepted")
    entry = next(
        (
            e
            for e in ledger.log.scan((Action.VALIDATE_PASSED,), digest, reverse=True)
            if e.subjects.get("dataset") == digest and e.details.get("name") == name
        ),
        None,
    )
    if entry is None:
        raise RefusedError("trusted-set", f"{ref} was never validated")
    try:
        frame = read_row_index(ledger, name, entry)
    except RefusedError as exc:
        raise RefusedError("trusted-set", exc.detail) from None
    if frame is None:
        raise RefusedError(
            "trusted-set", f"{ref} was validated without a row index; validate it again"
        )
    features = feature_columns(frame)
    hashes = frozenset(row_hashes(frame[features].to_numpy(dtype="float64")))
    return TrustedSet(ref, name, digest, frame, hashes)


def without_trusted_rows(frame, trusted: TrustedSet):
    """``frame`` without the rows whose features equal a trusted row, and how many left.

    Raises:
        ConfigError: The trusted set has other feature columns than ``frame``.
    """
    import numpy as np

    features = feature_columns(frame)
    if features != feature_columns(trusted.frame):
        raise ConfigError(
            f"evaluate.trusted_set: {trusted.ref} has other columns than this dataset"
        )
    hashes = row_hashes(frame[features].to_numpy(dtype="float64"))
    keep = np.array([h not in trusted.hashes for h in hashes], dtype=bool)
    return frame.iloc[keep].reset_index(drop=True), int((~keep).sum())
