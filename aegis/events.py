"""Prefect events from processes that must not import Prefect: a small REST poster.

The gateway (and the production monitor) tell the orchestrator what they saw as
Prefect events, so a ``DeploymentEventTrigger`` or an automation can act on them. They
post to Prefect's REST API (``POST {PREFECT_API_URL}/events``) with httpx instead of
importing Prefect's client: the core stays free of Prefect (an import-linter contract)
and a 1.7 s import. An event the server did not take stays queued in the
:class:`EventOutbox` and goes with the next :meth:`EventOutbox.send`; the queue is
bounded (the oldest are dropped first, counted), so an absent server costs memory once.

Without ``PREFECT_API_URL`` in the environment there is no server to tell: the outbox
keeps nothing and says so once (the audit entry and the metric still record the event).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("aegis.events")

MAX_QUEUED = 1000
RETRY_S = 10.0  # after a failed POST, the next try waits this long (the caller polls often)


def make_event(
    name: str, *, resource_id: str, resource: dict[str, str], payload: dict[str, Any]
) -> dict[str, Any]:
    """One event in Prefect's wire format (``resource`` labels must be strings)."""
    return {
        "id": str(uuid.uuid4()),
        "occurred": datetime.now(UTC).isoformat(),
        "event": name,
        "resource": {"prefect.resource.id": resource_id, **resource},
        "payload": payload,
        "related": [],
    }


class EventOutbox:
    """Events waiting for the Prefect server, sent in order by :meth:`send`.

    Args:
        api_url: The server's API (``http://host:4200/api``); ``None`` reads
            ``PREFECT_API_URL``; an empty string means no server.
        timeout: Seconds per POST (the caller is a background thread, never a request).
    """

    def __init__(self, api_url: str | None = None, *, timeout: float = 5.0) -> None:
        url = os.environ.get("PREFECT_API_URL", "") if api_url is None else api_url
        self.api_url = url.rstrip("/")
        self.timeout = timeout
        self.sent = 0
        self.dropped = 0
        self._queue: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._retry_at = 0.0
        if not self.api_url:
            log.info("no PREFECT_API_URL: events are audited and counted, not sent to Prefect")

    def put(self, event: dict[str, Any]) -> None:
        if not self.api_url:
            return
        with self._lock:
            if len(self._queue) >= MAX_QUEUED:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(event)

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def send(self, *, force: bool = False) -> int:
        """Posts every queued event in one request; the number sent (0 on failure, kept).

        Within ``RETRY_S`` of a failure it does not try (the gateway's watcher calls it
        twice a second), unless ``force`` (at shutdown).
        """
        with self._lock:
            batch = list(self._queue)
        if not batch or (not force and time.monotonic() < self._retry_at):
            return 0
        import httpx

        try:
            response = httpx.post(f"{self.api_url}/events", json=batch, timeout=self.timeout)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("Prefect did not take %d event(s) (%s); kept for the next try",
                        len(batch), type(exc).__name__)  # fmt: skip
            self._retry_at = time.monotonic() + RETRY_S
            return 0
        sent = {event["id"] for event in batch}
        with self._lock:  # only what was sent: put() may have added (or dropped) meanwhile
            while self._queue and self._queue[0]["id"] in sent:
                self._queue.popleft()
        self.sent += len(batch)
        return len(batch)
