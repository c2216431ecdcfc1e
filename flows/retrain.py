"""The ``retrain`` flow: the retrain run's steps (``aegis.pipeline.retrain``) as Prefect tasks.

ingest -> validate (the staged copy, before storing) -> store -> train ->
evaluate -> release. The order lives in the core; the flow composes it with
a task per step and publishes what the run proved as Prefect artifacts.

Started by ``aegis run`` (a person, in-process), by the ``aegis.dataset.arrived``
event trigger (``source``, ``name``, ``digest`` and ``event_id`` templated from
the event), by the ``aegis.monitor.breach`` trigger of a ``retrain`` incident
(``incident``: a forced retrain on the latest accepted data), by the schedule (no
source: the watched sources are listed), or through the API. Its parameters carry no
identity: who it acts as is decided by :func:`tasks.triggers.resolve_trigger`.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow

from aegis.ledger import Ledger
from aegis.pipeline.retrain import AlreadyCurrent, RetrainResult, run_retrain
from aegis.triggers.arrivals import Delivery, list_deliveries
from aegis.workspace import Workspace
from tasks import artifacts
from tasks.steps import as_task_on_runner
from tasks.triggers import manual_run, resolve_trigger
from tasks.workspace import pinned_workspace

__all__ = ["manual_run", "retrain"]


def _newest_per_name(ledger: Ledger, stable: list[Delivery]) -> list[Delivery]:
    """The newest new delivery of each pipeline dataset (an older one would be refused)."""
    names = set(ledger.ws.params().pipeline.datasets)
    newest: dict[str, Delivery] = {}
    for d in stable:
        if d.problem or d.name not in names or ledger.accepted(str(d.digest)) is not None:
            continue
        if d.name not in newest or str(d.created) > str(newest[d.name].created):
            newest[d.name] = d
    return list(newest.values())


def _scan_sources(ledger: Ledger) -> list[Delivery]:
    """Deliveries that two listings, one poll interval apart, agree on (never a partial copy)."""
    params = ledger.ws.params()
    retries = params.ingest.io_retries

    def listing() -> dict[str, Delivery]:
        sources = params.triggers.sources
        return {d.location: d for s in sources for d in list_deliveries(s, retries=retries)}

    first = listing()
    time.sleep(params.triggers.poll_interval)
    second = listing()
    stable = [d for loc, d in second.items() if loc in first and first[loc] == d]
    return _newest_per_name(ledger, stable)


def _one_run(
    ledger: Ledger, *, source: str, name: str, digest: str | None, event_id: str | None
) -> RetrainResult | AlreadyCurrent:
    trigger, actor, allow_older = resolve_trigger(
        ledger, source=source, name=name, digest=digest, event_id=event_id
    )
    print(f"retrain '{name}' from {source} ({trigger.describe()})")
    result = run_retrain(
        ledger, source=source, name=name, actor=actor, allow_older=allow_older, trigger=trigger,
        expect_digest=digest, runner=as_task_on_runner,
        on_wait=lambda: print("another run of this workspace is under way: waiting for it"),
    )  # fmt: skip
    if isinstance(result, AlreadyCurrent):
        print(result.message())
    artifacts.publish_run(ledger, result)
    return result


@flow(name="retrain", log_prints=True)
def retrain(
    workspace: str,
    source: str | None = None,
    name: str | None = None,
    digest: str | None = None,
    event_id: str | None = None,
    incident: str | None = None,
) -> RetrainResult | AlreadyCurrent | list[RetrainResult | AlreadyCurrent]:
    """Verifies, validates and versions a dataset, trains and evaluates a model, releases it.

    Args:
        workspace: Workspace root (a worker refuses any other than its own).
        source: Dataset directory or ``s3://bucket/prefix``; None lists ``triggers.sources``.
        name: Dataset name the manifest must carry (with ``source``).
        digest: The manifest digest the event reported (another one is refused).
        event_id: The triggering event (checked against the server's record).
        incident: A monitor incident whose action is ``retrain`` (checked against the
            audit log): retrain the latest accepted data, once per incident.
    """
    ledger = Ledger.load(Workspace(pinned_workspace(Path(workspace))))
    from tasks.evaluate_jobs import check_task_runner  # imports torch: not at flow import

    # A cluster that cannot be reached would fail the evaluation after training: refuse now,
    # before the run changes anything.
    check_task_runner(ledger.ws.params().run)
    if incident is not None:
        from aegis.pipeline.retrain import run_incident_retrain
        from tasks.triggers import this_flow_run

        run = this_flow_run()
        print(f"retrain for monitor incident {incident} (forced, on the latest accepted data)")
        result = run_incident_retrain(ledger, incident=incident, runner=as_task_on_runner,
                                      flow_run=str(run.id) if run else None)  # fmt: skip
        if isinstance(result, AlreadyCurrent):
            print(result.message())
        artifacts.publish_run(ledger, result)
        return result
    if source is not None:
        if name is None:
            from aegis.errors import UsageError

            raise UsageError("retrain: a source needs its dataset name")
        return _one_run(ledger, source=source, name=name, digest=digest, event_id=event_id)
    deliveries = _scan_sources(ledger)
    if not deliveries:
        print("already current: no new signed delivery in triggers.sources")
        artifacts.publish_nothing_new(ledger)
        return []
    return [
        _one_run(ledger, source=d.location, name=str(d.name), digest=d.digest, event_id=None)
        for d in deliveries
    ]
