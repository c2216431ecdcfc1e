"""The monitor's memory between passes: where it stopped reading, and running breaches.

``.aegis/monitor/state.json`` is a document the monitor key signs. Per model version
(``model@version``) it holds the cursor (the index line, its segment's digest and the
row the next window starts at), per signal the run of consecutive breaching windows
(their count, digests and first row's time), and the latencies of the version's last
requests (what ``latency_shift`` ranks a window against).

A state that does not verify is refused (``monitor-state``): an edit could hide a
breach or replay windows. A missing state starts at the beginning of the log; an older
copy restored by hand re-reads windows, and the incidents those windows already opened
are not opened again (:mod:`aegis.monitor.incidents` keys them by evidence).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aegis.crypto.documents import sign_document, verify_document
from aegis.crypto.keys import PrivateKey
from aegis.crypto.truststore import TrustStore
from aegis.errors import RefusedError, UnsafeFileError
from aegis.fileutil import atomic_write, ensure_dir, json_object, read_optional
from aegis.workspace import Workspace

STATE_KIND = "aegis-monitor-state/1"


@dataclass
class Streak:
    """Consecutive breaching windows of one signal."""

    count: int = 0
    windows: list[str] = field(default_factory=list)  # their digests
    first_time: str | None = None  # the first breaching window's first row


@dataclass
class VersionState:
    line: int = 1  # the segment index line the next window starts in
    offset: int = 0  # and its row there
    sha: str | None = None  # that segment's digest: an index rewritten under the cursor shows
    windows: int = 0  # windows checked so far
    streaks: dict[str, Streak] = field(default_factory=dict)
    latency: list[float] = field(default_factory=list)  # the last requests' latencies, ms


@dataclass
class MonitorState:
    versions: dict[str, VersionState] = field(default_factory=dict)

    def of(self, version: str) -> VersionState:
        return self.versions.setdefault(version, VersionState())

    def to_json(self) -> dict[str, Any]:
        return {"kind": STATE_KIND, "versions": {v: asdict(s) for v, s in self.versions.items()}}


def state_path(ws: Workspace) -> Path:
    return ws.aegis_dir / "monitor" / "state.json"


def load_state(ws: Workspace, trust: TrustStore) -> MonitorState:
    """The last saved state (verified), or a fresh one.

    Raises:
        RefusedError: ``monitor-state``: not a regular file, not signed by a monitor key
            of the trust store, or malformed.
    """
    path = state_path(ws)
    try:
        raw = read_optional(path, what=path.name)
    except UnsafeFileError as exc:
        raise RefusedError("monitor-state", f"{path.name}: {exc.detail}") from None
    if raw is None:
        return MonitorState()
    try:
        document = json_object(raw, check="monitor-state", what=path.name)
        signed = verify_document(document, kind=STATE_KIND, trust=trust)
    except RefusedError as exc:
        raise RefusedError("monitor-state", f"{path.name} does not verify ({exc.detail}): "
                           "an edited state could hide a breach") from None  # fmt: skip
    if signed.signer.role != "monitor" or signed.signer.status == "revoked":
        raise RefusedError("monitor-state", f"{path.name} is not signed by a monitor key "
                           "in good standing")  # fmt: skip
    try:
        versions = {str(v): _version(s) for v, s in document["body"]["versions"].items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise RefusedError("monitor-state", f"{path.name}: malformed") from None
    return MonitorState(versions)


def _version(data: dict[str, Any]) -> VersionState:
    streaks = {
        str(signal): Streak(int(t["count"]), [str(w) for w in t["windows"]], t["first_time"])
        for signal, t in data["streaks"].items()
    }
    sha = data.get("sha")
    latency = [float(v) for v in data.get("latency", [])]  # absent in states before it
    if not all(math.isfinite(v) for v in latency):
        raise ValueError("latency")
    return VersionState(int(data["line"]), int(data["offset"]), None if sha is None else str(sha),
                        int(data["windows"]), streaks, latency)  # fmt: skip


def save_state(ws: Workspace, state: MonitorState, key: PrivateKey) -> None:
    path = state_path(ws)
    ensure_dir(ws.root, path.parent)
    document = sign_document(key, state.to_json())
    atomic_write(path, json.dumps(document, sort_keys=True, indent=1).encode())
