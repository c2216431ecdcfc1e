"""Quarantine: rows that failed row-level checks, and signed, audited releases of them.

``quarantine/<name>.parquet`` (a DVC stage output) holds the failing rows
with ``_aegis_row`` (position in the dataset) and ``_aegis_reasons`` (the
failed expectations). Releasing rows back into training is an operator's
decision: a document signed with the operator's key, bound to the dataset
digest (so it never carries over to another version) and kept in the audit
entry ``quarantine.release``. Only such entries count (:meth:`Ledger.quarantine_releases`);
``quarantine/<name>.released.json`` is a copy for people and for DVC (the
train stage depends on it), never read to decide anything.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

from aegis.crypto.documents import sign_document
from aegis.crypto.keys import load_private_key
from aegis.errors import RefusedError, UnsafeFileError, UsageError
from aegis.fileutil import atomic_write, json_object, read_regular
from aegis.ledger import QUARANTINE_KIND, Action, Ledger
from aegis.pipeline.layout import Layout
from aegis.text import check_reason
from aegis.timeutil import utc_now

ROW = "_aegis_row"
REASONS = "_aegis_reasons"
QUARANTINE_LIMIT = 4 * 1024**3
EMPTY_RELEASES = {"dataset": "", "rows": [], "decisions": []}


def build_quarantine(frame, row_reasons: dict[int, list[str]]):
    """The quarantined rows of ``frame`` with their position and reasons."""
    rows = sorted(row_reasons)
    out = frame.reset_index(drop=True).iloc[rows].copy()
    out.insert(0, REASONS, ["; ".join(sorted(set(row_reasons[r]))) for r in rows])
    out.insert(0, ROW, rows)
    return out.reset_index(drop=True)


@dataclass(frozen=True)
class QuarantineSummary:
    """What is quarantined for one dataset."""

    name: str
    dataset_digest: str
    rows: int
    released: int
    reasons: dict[str, int]


def read_quarantine(layout: Layout, name: str):
    """The quarantine table of ``name`` (a regular file only).

    Raises:
        UsageError: ``name`` was never validated.
        RefusedError: ``validation``: the file is not a readable quarantine table.
    """
    import pandas as pd

    path = layout.quarantine(name)
    try:
        data = read_regular(path, limit=QUARANTINE_LIMIT, what=layout.rel(path))
        table = pd.read_parquet(io.BytesIO(data))
    except FileNotFoundError:
        raise UsageError(
            f"no quarantine for '{name}' (run `aegis validate {name}` first)"
        ) from None
    except UnsafeFileError:
        raise
    except Exception:  # pyarrow raises several types for a corrupt file
        raise RefusedError("validation", f"{layout.rel(path)} is not a quarantine table") from None
    if ROW not in table.columns or REASONS not in table.columns:
        raise RefusedError("validation", f"{layout.rel(path)} is not a quarantine table")
    return table


def quarantine_records(ledger: Ledger, name: str, *, values: bool = False) -> list[dict]:
    """Every quarantined row as ``{"row", "reasons", "released"}`` (and ``values``), in order.

    Raises:
        UsageError: ``name`` was never validated.
        RefusedError: ``validation``: the quarantine or result is not the audited one.
    """
    table = read_quarantine(Layout.of(ledger.ws), name)
    released = released_rows(ledger, name, validated_version(ledger, name))
    records = []
    features = table.drop(columns=[ROW, REASONS])
    cells = features.astype(object).where(features.notna(), None).to_dict(orient="records")
    for (row, reasons), cell in zip(table[[ROW, REASONS]].itertuples(index=False), cells,
                                    strict=True):  # fmt: skip
        record = {"row": int(row), "reasons": str(reasons).split("; "),
                  "released": int(row) in released}  # fmt: skip
        if values:
            record["values"] = cell
        records.append(record)
    return records


def released_rows(ledger: Ledger, name: str, dataset_digest: str) -> set[int]:
    """Rows released by signed, audited decisions for this exact dataset version."""
    rows: set[int] = set()
    for release in ledger.quarantine_releases(name, dataset_digest):
        rows.update(int(r) for r in release.body.get("rows", []) if isinstance(r, int))
    return rows


def validated_version(ledger: Ledger, name: str) -> str:
    """The dataset digest the quarantine on disk belongs to: the audited validation's.

    Raises:
        UsageError: ``name`` has not been validated.
        RefusedError: ``validation``: ``validation/<name>/result.json`` is not
            the result the validate stage audited.
    """
    import hashlib

    layout = Layout.of(ledger.ws)
    path = layout.validation_result(name)
    try:
        raw = read_regular(path, what=layout.rel(path))
    except FileNotFoundError:
        raise UsageError(f"'{name}' has not been validated (run `aegis validate {name}`)") from None
    digest = str(json_object(raw, check="validation", what=layout.rel(path)).get("dataset"))
    if ledger.validated(name, digest, "sha256:" + hashlib.sha256(raw).hexdigest()) is None:
        raise RefusedError(
            "validation", f"{layout.rel(path)} is not the audited validation result of '{name}'"
        )
    return digest


def summarize(ledger: Ledger, name: str, dataset_digest: str) -> QuarantineSummary:
    table = read_quarantine(Layout.of(ledger.ws), name)
    reasons: dict[str, int] = {}
    for text in table[REASONS]:
        for reason in str(text).split("; "):
            reasons[reason] = reasons.get(reason, 0) + 1
    released = released_rows(ledger, name, dataset_digest) & {int(r) for r in table[ROW]}
    return QuarantineSummary(name, dataset_digest, len(table), len(released), reasons)


def write_release_copy(ledger: Ledger, name: str, dataset_digest: str) -> Path:
    """Writes ``quarantine/<name>.released.json`` from the ledger (the copy DVC tracks)."""
    layout = Layout.of(ledger.ws)
    path = layout.quarantine_releases(name)
    releases = ledger.quarantine_releases(name, dataset_digest)
    doc = {
        "dataset": dataset_digest,
        "rows": sorted({int(r) for s in releases for r in s.body.get("rows", [])}),
        "decisions": [
            {
                "rows": s.body.get("rows"),
                "reason": s.body.get("reason"),
                "actor": s.signer.key_id,
                "owner": s.signer.owner,
                "time": s.body.get("created"),
                "audit_seq": s.entry.seq,
            }
            for s in releases
        ],
    }
    layout.ensure_dir(path.parent)
    atomic_write(path, json.dumps(doc, indent=1).encode() + b"\n")
    return path


def release(
    ledger: Ledger,
    name: str,
    *,
    dataset_digest: str,
    rows: list[int] | None,
    reason: str,
    operator_key_path: Path,
) -> list[int]:
    """Releases quarantined rows back into training: signed, audited, committed.

    Args:
        ledger: The workspace's ledger.
        name: Dataset name.
        dataset_digest: Digest of the validated version the quarantine belongs to.
        rows: Row positions to release, or None for all quarantined rows.
        reason: Why (required: the decision is on record).
        operator_key_path: The operator's private key, which signs the decision.

    Returns:
        The rows newly released.

    Raises:
        UsageError: No reason, no such rows, or all already released.
        RefusedError: ``signer``: not a current operator key.
    """
    if not check_reason(reason):
        raise UsageError("a release needs --reason")
    layout = Layout.of(ledger.ws)
    table = read_quarantine(layout, name)
    quarantined = {int(r) for r in table[ROW]}
    if not quarantined:
        raise UsageError(f"no row of '{name}' is quarantined")
    wanted = quarantined if rows is None else set(rows)
    unknown = sorted(wanted - quarantined)
    if unknown:
        raise UsageError(f"row(s) {unknown[:10]} are not in the quarantine of '{name}'")
    key = load_private_key(operator_key_path)
    with ledger.locked():
        layout.ensure_dir(layout.quarantine_releases(name).parent)  # before the entry
        operator = ledger.trust.require_signer(
            key.key_id, role="operator", what=str(operator_key_path), new=True
        )
        new = sorted(wanted - released_rows(ledger, name, dataset_digest))
        if not new:
            raise UsageError("those rows are already released")
        body = {
            "kind": QUARANTINE_KIND,
            "name": name,
            "dataset": dataset_digest,
            "rows": new,
            "reason": reason,
            "operator": {"key_id": operator.key_id, "owner": operator.owner},
            "created": utc_now(),
        }
        ledger.append(
            Action.QUARANTINE_RELEASE,
            actor=operator.key_id,
            subjects={"dataset": dataset_digest},
            details={"name": name, "rows": new, "reason": reason,
                     "signed": sign_document(key, body)},
        )  # fmt: skip
        path = write_release_copy(ledger, name, dataset_digest)
        ledger.commit(
            f"quarantine: release {len(new)} row(s) of {name}: {reason}", [layout.rel(path)]
        )
    return new
