"""Quarantine: rows that failed row-level checks, and audited releases of them.

``quarantine/<name>.parquet`` (a DVC stage output) holds the failing rows
with ``_aegis_row`` (position in the dataset) and ``_aegis_reasons`` (the
failed expectations). ``quarantine/<name>.released.json`` (in git) records
which of them an operator released back into training, bound to the
dataset digest, so a release never carries over to another version.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from aegis import vcs
from aegis.errors import ConfigError, UsageError
from aegis.fileutil import atomic_write
from aegis.timeutil import utc_now
from aegis.workspace import Workspace

ROW = "_aegis_row"
REASONS = "_aegis_reasons"
EMPTY_RELEASES = {"dataset": "", "rows": [], "decisions": []}


def quarantine_path(ws: Workspace, name: str) -> Path:
    return ws.root / "quarantine" / f"{name}.parquet"


def releases_path(ws: Workspace, name: str) -> Path:
    return ws.root / "quarantine" / f"{name}.released.json"


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


def read_quarantine(ws: Workspace, name: str):
    """The quarantine table of ``name``.

    Raises:
        UsageError: ``name`` was never validated.
    """
    import pandas as pd

    path = quarantine_path(ws, name)
    if not path.is_file():
        raise UsageError(f"no quarantine for '{name}' (run `aegis validate {name}` first)")
    return pd.read_parquet(path)


def read_releases(ws: Workspace, name: str) -> dict:
    path = releases_path(ws, name)
    if not path.is_file():
        return copy.deepcopy(EMPTY_RELEASES)
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise ConfigError(f"{path}: not valid JSON") from None


def released_rows(ws: Workspace, name: str, dataset_digest: str) -> set[int]:
    """Rows released for this exact dataset version (none for any other version)."""
    releases = read_releases(ws, name)
    return set(releases["rows"]) if releases.get("dataset") == dataset_digest else set()


def summarize(ws: Workspace, name: str, dataset_digest: str) -> QuarantineSummary:
    table = read_quarantine(ws, name)
    reasons: dict[str, int] = {}
    for text in table[REASONS]:
        for reason in text.split("; "):
            reasons[reason] = reasons.get(reason, 0) + 1
    released = released_rows(ws, name, dataset_digest) & set(table[ROW])
    return QuarantineSummary(name, dataset_digest, len(table), len(released), reasons)


def release(
    ws: Workspace,
    name: str,
    *,
    dataset_digest: str,
    rows: list[int] | None,
    reason: str,
    actor: str,
) -> list[int]:
    """Releases quarantined rows back into training: committed and audited.

    Args:
        ws: The workspace.
        name: Dataset name.
        dataset_digest: Digest of the validated version the quarantine belongs to.
        rows: Row positions to release, or None for all quarantined rows.
        reason: Why (required: the decision is on record).
        actor: Key id of the operator.

    Returns:
        The rows newly released.
    """
    if not reason.strip():
        raise UsageError("a release needs --reason")
    table = read_quarantine(ws, name)
    quarantined = set(int(r) for r in table[ROW])
    if not quarantined:
        raise UsageError(f"no row of '{name}' is quarantined")
    wanted = quarantined if rows is None else set(rows)
    unknown = sorted(wanted - quarantined)
    if unknown:
        raise UsageError(f"row(s) {unknown[:10]} are not in the quarantine of '{name}'")
    with ws.lock():
        releases = read_releases(ws, name)
        if releases.get("dataset") != dataset_digest:
            releases = {"dataset": dataset_digest, "rows": [], "decisions": []}
        new = sorted(wanted - set(releases["rows"]))
        if not new:
            raise UsageError("those rows are already released")
        releases["rows"] = sorted(set(releases["rows"]) | set(new))
        releases["decisions"].append(
            {"rows": new, "reason": reason, "actor": actor, "time": utc_now()}
        )
        path = releases_path(ws, name)
        path.parent.mkdir(exist_ok=True)
        atomic_write(path, json.dumps(releases, indent=1).encode() + b"\n")
        rel = str(path.relative_to(ws.root))
        commit = vcs.commit_paths(
            ws.root, f"quarantine: release {len(new)} row(s) of {name}: {reason}", [rel]
        )
        ws.audit().append(
            actor=actor,
            action="quarantine.release",
            pipeline_key=ws.pipeline_key(),
            subjects={"dataset": dataset_digest},
            details={"name": name, "rows": new, "reason": reason, "commit": commit},
        )
    return new
