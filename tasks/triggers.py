"""Prefect's part of the triggers: emitting arrivals, reading them back, naming the trigger.

The core (:mod:`aegis.triggers`) decides what arrived and what a trigger is;
this module talks to the Prefect server. Events are posted through the REST
API (``POST /events``) rather than Prefect's fire-and-forget events client, so
an arrival is marked emitted only once the server acknowledged it: an event
sent while the server is down is sent again by the next poll.

Who started a run is never read from a flow parameter alone (OSS Prefect has
no access control): an event id is looked up on the server and must match
the run's source, name and digest; a schedule is the flow run's own
``auto_scheduled`` flag; a person is only ever the CLI process that holds
their key (:data:`MANUAL`, a context variable no API call can set).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aegis.errors import ConfigError, RefusedError
from aegis.ledger import Ledger
from aegis.triggers.arrivals import EVENT, Delivery, check_source
from aegis.triggers.record import Trigger

EVENT_LOOKUP_S = 30.0  # the server persists events in batches: a just-fired one may lag


@dataclass(frozen=True)
class ManualRun:
    """A run started by a person at the CLI: their key id, and their decisions."""

    actor: str
    allow_older: bool = False


MANUAL: contextvars.ContextVar[ManualRun | None] = contextvars.ContextVar(
    "aegis_manual_run", default=None
)


@contextlib.contextmanager
def manual_run(actor: str, *, allow_older: bool = False) -> Iterator[None]:
    """Marks flows called in this context as started by ``actor`` (the CLI only)."""
    token = MANUAL.set(ManualRun(actor, allow_older))
    try:
        yield
    finally:
        MANUAL.reset(token)


def workspace_label(ledger: Ledger) -> str:
    """The workspace's name in events: its pipeline key id (first 16 hex digits)."""
    return ledger.ws.label()


def _client():
    from prefect import get_client

    return get_client(sync_client=True)


def _unreachable(exc: Exception) -> ConfigError:
    from prefect.settings import PREFECT_API_URL

    return ConfigError(f"Prefect server unreachable at {PREFECT_API_URL.value() or '(none)'}: "
                       f"{type(exc).__name__}")  # fmt: skip


def emit_arrival(ledger: Ledger, delivery: Delivery) -> str:
    """Posts ``aegis.dataset.arrived`` for ``delivery``; returns the event id once acknowledged.

    Raises:
        ConfigError: The server did not take the event (unreachable or refused).
    """
    import httpx

    event_id = str(uuid.uuid4())
    event = {
        "id": event_id,
        "occurred": datetime.now(UTC).isoformat(),
        "event": EVENT,
        "resource": {
            "prefect.resource.id": f"aegis.source.{delivery.location}",
            "prefect.resource.name": delivery.location,
            "aegis.source": delivery.source,
            "aegis.location": delivery.location,
            "aegis.digest": str(delivery.digest),
            "aegis.workspace": workspace_label(ledger),
        },
        "payload": delivery.payload(),
        "related": [],
    }
    try:
        with _client() as client:
            client.request("POST", "/events", json=[event])
    except (httpx.HTTPError, OSError) as exc:
        raise _unreachable(exc) from None
    return event_id


def read_event(event_id: str) -> Any | None:
    """The server's record of event ``event_id``; None if it has none (after a short wait)."""
    from prefect.events.filters import EventFilter, EventIDFilter

    try:
        wanted = uuid.UUID(event_id)
    except ValueError:
        return None
    deadline = time.monotonic() + EVENT_LOOKUP_S
    with _client() as client:
        while True:
            page = client.read_events(filter=EventFilter(id=EventIDFilter(id=[wanted])), limit=1)
            if page.events:
                return page.events[0]
            if time.monotonic() >= deadline:
                return None
            time.sleep(1.0)


def check_event(ledger: Ledger, event_id: str, *, source: str, name: str, digest: str) -> Trigger:
    """The trigger of an event-started run, if the server's event matches the run's parameters.

    Raises:
        RefusedError: ``trigger``: no such event, another kind of event, another
            workspace, or a source, name or digest that differs from the parameters.
    """
    event = read_event(event_id)
    if event is None:
        raise RefusedError("trigger", f"event {event_id[:36]} is unknown to the Prefect server")
    resource, payload = event.resource, event.payload or {}
    problems = [
        what for what, ok in (
            ("event name", event.event == EVENT),
            ("workspace", resource.get("aegis.workspace") == workspace_label(ledger)),
            ("location", resource.get("aegis.location") == source),
            ("dataset name", payload.get("name") == name),
            ("digest", payload.get("digest") == digest),
        ) if not ok
    ]  # fmt: skip
    if problems:
        raise RefusedError(
            "trigger", f"event {event_id[:36]} does not match this run ({', '.join(problems)})"
        )
    check_source(source, ledger.ws.params().triggers.sources)
    return Trigger(kind="event", event_id=str(event.id), event=EVENT, source=source)


def this_flow_run() -> Any | None:
    """The current flow run's server record (None outside a flow run)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return context.flow_run if context else None


def resolve_trigger(
    ledger: Ledger,
    *,
    source: str | None,
    name: str | None,
    digest: str | None,
    event_id: str | None,
) -> tuple[Trigger, str, bool]:
    """Who started this run: ``(trigger, actor key id, allow_older)``.

    A person only from :data:`MANUAL` (the CLI); otherwise the run is
    unattended, acts as the pipeline key and never takes an older dataset.

    Raises:
        RefusedError: ``trigger``: an event that does not check out, or an
            unattended run on a source outside ``triggers.sources``.
    """
    run = this_flow_run()
    run_id = str(run.id) if run is not None else None
    manual = MANUAL.get()
    if manual is not None:
        return (
            Trigger(kind="manual", person=manual.actor, flow_run=run_id),
            manual.actor,
            (manual.allow_older),
        )
    pipeline = ledger.pipeline_entry().key_id
    if event_id:
        if source is None or name is None or not digest:
            raise RefusedError(
                "trigger", "an event-started run needs the source, name and digest its event named"
            )
        trigger = check_event(ledger, event_id, source=source, name=name, digest=digest)
        return Trigger(**{**trigger.to_dict(), "flow_run": run_id}), pipeline, False
    if source is not None:
        check_source(source, ledger.ws.params().triggers.sources)
    if run is not None and getattr(run, "auto_scheduled", False):
        cron = ledger.ws.params().triggers.schedule
        return Trigger(kind="schedule", schedule=cron, flow_run=run_id), pipeline, False
    return Trigger(kind="manual", flow_run=run_id), pipeline, False


def retrain_runs(deployment: str = "retrain/retrain", limit: int = 200) -> dict[str, str]:
    """Digest -> state type of the latest runs of the retrain deployment the server knows."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    found: dict[str, str] = {}
    with _client() as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(
                name=DeploymentFilterName(any_=[deployment.split("/")[-1]])
            ),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=limit,
        )
    for run in runs:
        digest = (run.parameters or {}).get("digest")
        if isinstance(digest, str) and digest not in found:
            found[digest] = run.state.type.value if run.state else "UNKNOWN"
    return found
