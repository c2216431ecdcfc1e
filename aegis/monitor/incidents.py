"""Incidents: what the monitor saw, when it started, when it was seen, what was done.

An incident is one audit entry (``monitor.breach``) appended by the monitor when
signals breached their thresholds in ``confirm`` consecutive windows of one model
version (every signal confirmed on the same window is one incident): the signals, their
values and thresholds, the confirming windows' digests (the evidence: which signed
segment rows they were), the time of the first bad request (the first row of the first
breaching window), the time it was detected and the action; containment
(:mod:`aegis.monitor.contain`) appends a ``monitor.contained`` entry naming it, with
when containment ended or why it was refused. Its id is derived from the evidence, so
a window read twice (an older state restored) never opens a second incident.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from aegis.ledger import Action, Ledger
from aegis.timeutil import parse_utc


@dataclass(frozen=True)
class Incident:
    id: str
    model: str
    version: str
    signals: list[str]  # every signal confirmed on the same window
    values: dict[str, list[float]]  # per signal, its value in each confirming window
    thresholds: dict[str, float]
    windows: list[str]
    first_bad: str  # ISO time of the first bad request
    detected: str  # ISO time of detection
    action: str
    actor: str
    contained: str | None = None  # when containment ended (None: alert only)
    top_client_share: float = 0.0  # the largest share one client key had of the windows
    seq: int | None = None  # its audit entry
    clients: list[str] = field(default_factory=list)  # the keys a throttle covers
    why: str = ""  # why this action
    containment: dict[str, Any] | None = None  # its monitor.contained entry's details

    @property
    def time_to_detect_s(self) -> float:
        return _seconds(self.first_bad, self.detected)

    @property
    def time_to_contain_s(self) -> float | None:
        return None if self.contained is None else _seconds(self.first_bad, self.contained)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "model": self.model, "version": self.version, "signals": self.signals,
            "values": self.values, "thresholds": self.thresholds, "windows": self.windows,
            "first_bad": self.first_bad, "detected": self.detected, "action": self.action,
            "actor": self.actor, "contained": self.contained,
            "top_client_share": self.top_client_share, "seq": self.seq,
            "clients": self.clients, "why": self.why, "containment": self.containment,
            "time_to_detect_s": round(self.time_to_detect_s, 3),
            "time_to_contain_s": None if self.contained is None
            else round(self.time_to_contain_s or 0.0, 3),
        }  # fmt: skip


def incident_id(version: str, windows: list[str]) -> str:
    """Named by its evidence: the same confirming windows are always the same incident."""
    digest = hashlib.sha256("\n".join([version, *windows]).encode()).hexdigest()
    return f"inc-{digest[:12]}"


def incidents(ledger: Ledger) -> list[Incident]:
    """Every incident on the audit log, oldest first, with its containment."""
    contained: dict[str, dict[str, Any]] = {}
    for entry in ledger.log.by_action(Action.MONITOR_CONTAINED):
        if isinstance(entry.details.get("incident"), str):
            contained[entry.details["incident"]] = dict(entry.details)  # the last one counts
    out = []
    for entry in ledger.log.by_action(Action.MONITOR_BREACH):
        d = entry.details
        try:
            out.append(Incident(
                id=str(d["id"]), model=str(d["model"]), version=str(d["version"]),
                signals=[str(x) for x in d["signals"]],
                values={str(k): [float(v) for v in vs] for k, vs in d["values"].items()},
                thresholds={str(k): float(v) for k, v in d["thresholds"].items()},
                windows=[str(w) for w in d["windows"]],
                first_bad=str(d["first_bad"]), detected=str(d["detected"]),
                action=str(d["action"]), actor=entry.actor,
                contained=contained.get(str(d["id"]), {}).get("contained"),
                top_client_share=float(d.get("top_client_share", 0.0)), seq=entry.seq,
                clients=[str(c) for c in d.get("clients", [])], why=str(d.get("why", "")),
                containment=contained.get(str(d["id"])),
            ))  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError):
            continue  # the entry verified with the log; a shape this code never wrote
    return out


def record_incident(ledger: Ledger, incident: Incident) -> tuple[Incident, bool]:
    """Appends ``incident`` unless its id is on the log already (call under the ledger's
    lock); the recorded incident and whether it is new."""
    known = {i.id: i for i in incidents(ledger)}
    if incident.id in known:
        return known[incident.id], False
    body = incident.to_json()
    for derived in ("seq", "actor", "time_to_detect_s", "time_to_contain_s", "contained",
                    "containment"):  # fmt: skip
        body.pop(derived)
    entry = ledger.append(
        Action.MONITOR_BREACH, actor=incident.actor,
        subjects={"model": incident.model, "version": incident.version},
        details=body,
    )  # fmt: skip
    return Incident(**{**incident.__dict__, "seq": entry.seq}), True


def _seconds(start: str, end: str) -> float:
    return (parse_utc(end) - parse_utc(start)).total_seconds()
