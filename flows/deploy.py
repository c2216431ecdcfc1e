"""Registering Aegis on a Prefect server: ``aegis deploy`` (watch, retrain, promote, rollback).

The deployments load the installed flows by module path (``flows.retrain.retrain``),
so a worker needs only ``pip install aegis`` and access to the workspace:
no code is shipped through the server. Each deployment's only default
parameter is the workspace, and a worker started by ``aegis worker`` runs
flows for that workspace alone.

- ``watch/<name>``: on an interval of ``triggers.watch_for``, at most one run at a
  time (a new one is cancelled while one polls).
- ``retrain/<name>``: the ``aegis.dataset.arrived`` event trigger (this workspace's
  events, one run per manifest digest within ``triggers.within``), the
  ``aegis.monitor.breach`` trigger of incidents whose action is ``retrain`` (one run per
  incident), and the ``triggers.schedule`` cron if set; one run at a time, the rest queued.
- ``monitor/<name>``: a monitor pass every ``monitor.every`` seconds (no schedule when
  unset); the worker holds the monitor key (``AEGIS_MONITOR_KEY``), never a parameter.
- ``promote/<name>``, ``rollback/<name>``: no schedule; they run only operator-signed
  requests (see ``tasks/registry.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from aegis.config import duration_seconds
from aegis.errors import ConfigError
from aegis.ledger import Ledger
from aegis.monitor.contain import BREACH
from aegis.triggers.arrivals import EVENT
from aegis.workspace import Workspace
from flows.monitor import monitor
from flows.promote import promote
from flows.retrain import retrain
from flows.rollback import rollback
from flows.watch import watch
from tasks.triggers import workspace_label

POOL = "aegis"
NAME = "aegis"


@dataclass(frozen=True)
class Deployed:
    """One deployment registered on the server."""

    name: str  # flow/deployment
    id: str
    schedule: str | None
    triggers: int


def arrival_trigger(label: str, root: str, within: float):
    """The retrain deployment's event trigger: one run per digest of this workspace's arrivals."""
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name=f"aegis: retrain on arrival ({label})",
        expect={EVENT},
        match={"aegis.workspace": label},
        for_each={"aegis.digest"},
        posture="Reactive",
        threshold=1,
        within=timedelta(seconds=within),
        parameters={
            "workspace": root,
            "source": "{{ event.resource['aegis.location'] }}",
            "name": "{{ event.payload.name }}",
            "digest": "{{ event.payload.digest }}",
            "event_id": "{{ event.id | string }}",  # a UUID: its JSON is its string
        },
    )


def incident_trigger(label: str, root: str):
    """The retrain deployment's second trigger: a monitor incident whose action is retrain."""
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name=f"aegis: retrain on a monitor incident ({label})",
        expect={BREACH}, match={"aegis.workspace": label, "aegis.action": "retrain"},
        for_each={"aegis.incident"}, posture="Reactive", threshold=1,
        within=timedelta(seconds=3600),
        parameters={"workspace": root, "incident": "{{ event.resource['aegis.incident'] }}"},
    )  # fmt: skip


def _ensure_pool(client, pool: str) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    try:
        client.read_work_pool(pool)
    except ObjectNotFound:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))


def deploy_all(root: Path, *, pool: str = POOL, name: str = NAME) -> list[Deployed]:
    """Creates or updates the five deployments (and the work pool) on the configured server.

    Raises:
        ConfigError: No ``PREFECT_API_URL``, or the server is unreachable.
    """
    import httpx
    from prefect import get_client
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.deployments.runner import EntrypointType
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ConfigError("PREFECT_API_URL is not set: `aegis deploy` registers on a server")
    ledger = Ledger.load(Workspace(root))
    params = ledger.ws.params().triggers
    every = ledger.ws.params().monitor.every
    label = workspace_label(ledger)
    common = {"work_pool_name": pool, "entrypoint_type": EntrypointType.MODULE_PATH,
              "parameters": {"workspace": str(root)}, "tags": ["aegis", f"ws-{label}"]}  # fmt: skip
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy="ENQUEUE")
    specs = [
        watch.to_deployment(
            name, **common, interval=duration_seconds(params.watch_for) if params.sources else None,
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy="CANCEL_NEW"),
            description="lists triggers.sources; emits aegis.dataset.arrived per new delivery",
        ),
        retrain.to_deployment(
            name, **common, cron=params.schedule, concurrency_limit=one_at_a_time,
            triggers=[arrival_trigger(label, str(root), params.within),
                      incident_trigger(label, str(root))],
            description="verify -> validate -> store -> train -> evaluate -> signed release",
        ),
        promote.to_deployment(
            name, **common, description="completes an operator-signed promotion request"
        ),
        rollback.to_deployment(
            name, **common, description="runs an operator-signed rollback request"
        ),
        monitor.to_deployment(
            name, **common, interval=every, concurrency_limit=ConcurrencyLimitConfig(
                limit=1, collision_strategy="CANCEL_NEW"),
            description="one production-monitor pass (the worker's AEGIS_MONITOR_KEY)",
        ),
    ]  # fmt: skip
    try:
        with get_client(sync_client=True) as client:
            _ensure_pool(client, pool)
        out = []
        for spec in specs:
            deployment_id = spec.apply()
            cron = params.schedule if spec.flow_name == "retrain" else None
            every = {
                "watch": f"every {params.watch_for}",
                "monitor": f"every {ledger.ws.params().monitor.every} s"
                if ledger.ws.params().monitor.every
                else None,
            }.get(spec.flow_name)
            out.append(Deployed(f"{spec.flow_name}/{name}", str(deployment_id), cron or every,
                                len(spec.triggers)))  # fmt: skip
        return out
    except (httpx.HTTPError, OSError) as exc:
        raise ConfigError(f"Prefect server unreachable at {url}: {type(exc).__name__}") from None
