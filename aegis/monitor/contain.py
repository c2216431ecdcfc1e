"""Containment: what a confirmed breach does, and doing it with the monitor's key.

The policy is the *served release's* signed ``monitor:`` params (so it travels with the
thresholds it was fitted with): per signal ``alert``, ``throttle``, ``retrain`` or
``rollback``, the strongest of an incident's signals winning. Two rules narrow it:

- a breach whose rows came mostly from one client key (``single_client_share``) only
  throttles that key: one caller's odd traffic must not burn a good version;
- ``throttle`` covers every key with at least ``throttle_share`` of the evidence rows
  (when none has that much, the keys with the largest share).

Doing it, with a ``monitor`` key (least privilege: the trust store lets that role roll
back and throttle, nothing else):

- ``rollback``: the registry's verified rollback to the last known-good version, which
  marks the version left ``suspect`` (an operator decides whether it is bad); then, when
  a gateway URL is given, waiting until its ``/readyz`` serves the target: containment
  ends when the gateway serves it, not when the tags moved;
- ``throttle``: one ``monitor.throttle`` audit entry per key, read by the gateway at its
  next request (it checks the audit log on every request) for ``throttle_minutes``;
- ``retrain``: the ``aegis.monitor.breach`` event says so (``aegis.action``); the
  retrain deployment's trigger starts the forced retrain (never from the core);
- ``alert``: the incident and the event are all.

Each ends in one ``monitor.contained`` entry naming the incident and its evidence
windows: when containment ended (or why it was refused).
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from aegis.errors import AegisError, TransientIOError
from aegis.ledger import Action, Ledger
from aegis.monitor.incidents import Incident
from aegis.timeutil import format_utc, parse_utc, utc_now

BREACH = "aegis.monitor.breach"  # the event a confirmed breach emits
STRENGTH = {"alert": 0, "throttle": 1, "retrain": 2, "rollback": 3}


@dataclass(frozen=True)
class Decision:
    """What an incident gets."""

    action: str  # alert | throttle | retrain | rollback
    clients: list[str]  # the keys a throttle covers
    why: str


def decide(signals: list[str], shares: dict[str, float], params) -> Decision:
    """The action for an incident of ``signals`` whose rows came from keys in ``shares``.

    Args:
        signals: The confirmed signals.
        shares: Each client key's share of the evidence rows.
        params: The release's ``MonitorParams``.
    """
    action = max((params.actions.get(s, "alert") for s in signals), key=STRENGTH.__getitem__)
    top, share = max(shares.items(), key=lambda kv: kv[1]) if shares else ("", 0.0)
    if action != "alert" and share >= params.single_client_share:
        return Decision("throttle", [top], f"{share:.0%} of the rows came from one key: "
                        f"it alone is throttled (policy: {action})")  # fmt: skip
    if action == "throttle":
        keys = sorted(c for c, s in shares.items() if s >= params.throttle_share)
        keys = keys or sorted(c for c, s in shares.items() if s == share)  # else the largest
        return Decision("throttle", keys, f"{len(keys)} key(s) with >= "
                        f"{params.throttle_share:.0%} of the rows")  # fmt: skip
    return Decision(action, [], f"policy for {', '.join(signals)}")


def contain(
    ledger: Ledger,
    incident: Incident,
    *,
    key_path: Path,
    params,
    gateway: str | None = None,
    progress=lambda _: None,
) -> dict[str, Any] | None:
    """Carries out ``incident.action``; the ``monitor.contained`` entry's details, or None
    when there is nothing to contain (alert, retrain: the event carries it), another pass
    contained it first, or a transient I/O error leaves it for the next pass."""
    evidence = {"incident": incident.id, "version": incident.version, "windows": incident.windows}
    if incident.action == "throttle":
        until = format_utc(parse_utc(utc_now()) + timedelta(minutes=params.throttle_minutes))
        with ledger.locked():
            for client in incident.clients:
                ledger.append(Action.MONITOR_THROTTLE, actor=incident.actor,
                              subjects={"client": client},
                              details={"client": client, "until": until, **evidence})  # fmt: skip
            return _contained(ledger, incident, {"result": "throttled", "until": until,
                                                 "clients": incident.clients})  # fmt: skip
    if incident.action != "rollback":
        return None
    from aegis.registry.rollback import rollback

    done = _rolled_back_for(ledger, incident.id)
    if done is not None:  # a crash after the rollback, before its record: record it now
        with ledger.locked():
            return _contained(ledger, incident, {"result": "rolled-back", **done,
                                                 "served": "registry"})  # fmt: skip
    try:
        outcome = rollback(
            ledger, to=None, operator_key_path=None, monitor_key_path=key_path,
            model=incident.model, evidence=evidence,
            reason=f"monitor incident {incident.id}: {', '.join(incident.signals)} breached",
        )  # fmt: skip
    except TransientIOError as exc:  # the store may answer next time: not a refusal
        progress(f"incident {incident.id}: rollback not done yet ({exc}); next pass retries")
        return None
    except AegisError as exc:
        progress(f"incident {incident.id}: rollback refused ({exc})")
        with ledger.locked():
            return _contained(ledger, incident, {"result": "refused", "reason": str(exc)})
    progress(f"incident {incident.id}: rolled back {outcome.from_version} -> "
             f"{outcome.to_version} ({outcome.from_version} marked suspect)")  # fmt: skip
    served_at = "registry"
    if gateway:
        served_at = "gateway" if wait_served(gateway, outcome.to_version,
                                              params.contain_timeout) else "timeout"  # fmt: skip
    with ledger.locked():
        return _contained(ledger, incident, {
            "result": "rolled-back" if served_at != "timeout" else "rolled-back-not-served",
            "from_version": outcome.from_version, "to_version": outcome.to_version,
            "served": served_at, "rollback_seq": outcome.audit_seq,
        })  # fmt: skip


def _rolled_back_for(ledger: Ledger, incident_id: str) -> dict[str, Any] | None:
    """The completed rollback whose intent names ``incident_id``, if any."""
    intents = {e.seq: e for e in ledger.log.by_action(Action.intent("rollback"))
               if e.details.get("incident") == incident_id}  # fmt: skip
    for done in ledger.log.by_action(Action.done("rollback")):
        intent = intents.get(done.details.get("intent"))  # type: ignore[arg-type]
        if intent is not None:
            return {
                "from_version": intent.details.get("from_version"),
                "to_version": intent.details.get("to_version"),
                "rollback_seq": done.seq,
            }
    return None


def _contained(
    ledger: Ledger, incident: Incident, details: dict[str, Any]
) -> dict[str, Any] | None:
    """Appends the incident's ``monitor.contained`` entry (call under the ledger's lock);
    None when one is there already (another pass got there first: its record stands)."""
    ledger.refresh()
    if any(e.details.get("incident") == incident.id
           for e in ledger.log.by_action(Action.MONITOR_CONTAINED)):  # fmt: skip
        return None
    done = details["result"] in ("throttled", "rolled-back")
    body = {"incident": incident.id, "windows": incident.windows, **details,
            **({"contained": utc_now()} if done else {})}  # fmt: skip
    ledger.append(Action.MONITOR_CONTAINED, actor=incident.actor,
                  subjects={"model": incident.model, "version": incident.version},
                  details=body)  # fmt: skip
    return body


def wait_served(gateway: str, version: str, timeout: float) -> bool:
    """Polls ``GET {gateway}/readyz`` until it serves ``version`` (or ``timeout`` passes)."""
    url = gateway.rstrip("/") + "/readyz"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body = json.loads(response.read(4096))
                if isinstance(body, dict) and body.get("version") == version:
                    return True
        except (OSError, ValueError):
            pass  # not up, or reloading: ask again
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
