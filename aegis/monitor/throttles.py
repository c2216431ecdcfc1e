"""The monitor's throttles in force: which client keys the gateway slows, and until when.

A throttle is a ``monitor.throttle`` audit entry (:mod:`aegis.monitor.contain`) signed
into the log by the monitor's actor; the gateway reads them whenever the log changes,
as it does the client list, so a throttle binds from the next request. It lapses at its
``until``; nothing else lifts it (revoking the key is the stronger step).
"""

from __future__ import annotations

from aegis.ledger import Action, Ledger
from aegis.timeutil import parse_utc


def throttles(ledger: Ledger) -> dict[str, float]:
    """``{client id: until (epoch seconds)}`` of every throttle entry, the latest per key
    (expired ones included: the caller compares with its clock)."""
    out: dict[str, float] = {}
    for entry in ledger.log.by_action(Action.MONITOR_THROTTLE):
        client, until = entry.details.get("client"), entry.details.get("until")
        if not isinstance(client, str) or not isinstance(until, str):
            continue
        try:
            out[client] = max(out.get(client, 0.0), parse_utc(until).timestamp())
        except ValueError:
            continue  # a shape this code never wrote
    return out
