"""The monitor's window history: every tested window's signal values, for plots.

``.aegis/monitor/windows.jsonl`` gets one line per window a pass tested: the model
version, the window's evidence digest, its first and last request times, each signal's
value and threshold, and which breached. It is what the incident report and dashboards
draw; it decides nothing (incidents are on the signed audit log, the cursor in the
signed state), so it is appended without a signature and read leniently: a line that
does not parse is skipped, a file that is not a regular file is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aegis.errors import RefusedError, UnsafeFileError
from aegis.fileutil import ensure_dir, read_optional
from aegis.workspace import Workspace

READ_LIMIT = 64 << 20  # about 150k windows; the report reads the newest ``last`` only


@dataclass(frozen=True)
class WindowRecord:
    """One tested window."""

    model: str
    version: str
    window: str  # its evidence digest (the signed segment rows it spans)
    start: str  # ISO time of its first request
    end: str  # and of its last
    values: dict[str, float]
    thresholds: dict[str, float]
    breached: list[str] = field(default_factory=list)


def windows_path(ws: Workspace) -> Path:
    return ws.aegis_dir / "monitor" / "windows.jsonl"


def append_windows(ws: Workspace, records: list[WindowRecord]) -> None:
    """Appends ``records`` (one write, so concurrent readers see whole lines)."""
    if not records:
        return
    path = windows_path(ws)
    ensure_dir(ws.root, path.parent)
    data = "".join(json.dumps(asdict(r), sort_keys=True) + "\n" for r in records).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)  # fmt: skip
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_windows(ws: Workspace, *, last: int | None = None) -> list[WindowRecord]:
    """The recorded windows, oldest first (the newest ``last`` when given).

    Raises:
        RefusedError: ``monitor-windows``: the file is a symlink, FIFO or over the limit.
    """
    path = windows_path(ws)
    try:
        raw = read_optional(path, limit=READ_LIMIT, what=path.name)
    except UnsafeFileError as exc:
        raise RefusedError("monitor-windows", exc.detail) from None
    if raw is None:
        return []
    out = []
    for line in raw.splitlines():
        record = _parse(line)
        if record is not None:
            out.append(record)
    return out[-last:] if last else out


def _parse(line: bytes) -> WindowRecord | None:
    try:
        d: Any = json.loads(line)
        return WindowRecord(
            model=str(d["model"]), version=str(d["version"]), window=str(d["window"]),
            start=str(d["start"]), end=str(d["end"]),
            values={str(k): float(v) for k, v in d["values"].items()},
            thresholds={str(k): float(v) for k, v in d["thresholds"].items()},
            breached=[str(s) for s in d.get("breached", [])],
        )  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None  # a torn or foreign line: the history is for plots, not decisions
