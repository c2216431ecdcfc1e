"""The ``watch`` flow: lists ``triggers.sources`` and reports each new, complete delivery.

Each poll lists every source; a delivery with a ``dataset.sig`` that two
polls saw unchanged, whose manifest digest was never accepted, is reported
as an ``aegis.dataset.arrived`` event, which the retrain deployment's event
trigger turns into a run. One watch run polls every ``triggers.poll_interval``
for ``triggers.watch_for`` and ends; the deployment's interval schedule
starts the next (concurrency 1), so a process starts once per ``watch_for``
rather than once per poll.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from prefect import flow

from aegis.config import duration_seconds
from aegis.errors import ConfigError
from aegis.ledger import Ledger
from aegis.triggers.arrivals import PollResult, Watch
from aegis.workspace import Workspace
from tasks import artifacts
from tasks.heartbeats import short_run
from tasks.triggers import emit_arrival, retrain_runs
from tasks.workspace import pinned_workspace

__all__ = ["poll_once", "short_run", "watch"]


def _known_run(runs: dict[str, str], digest: str) -> bool:
    """A run the server knows that did not crash (a crashed one's delivery is reported again)."""
    return runs.get(digest) not in (None, "CRASHED")


def poll_once(ledger: Ledger, watch: Watch) -> tuple[PollResult, list[dict[str, str]]]:
    """One poll: lists, emits what is ready (marked only once the server took it), saves."""
    ledger.refresh()
    runs: dict[str, str] | None = None

    def known(digest: str) -> bool:
        nonlocal runs
        if runs is None:
            try:
                runs = retrain_runs()
            except (OSError, httpx.HTTPError):  # the server is down: the emit fails and retries
                runs = {}
        return _known_run(runs, digest)

    result = watch.poll(
        accepted=lambda d: ledger.accepted(d) is not None,
        known_run=known,
        allowed_names=set(ledger.ws.params().pipeline.datasets),
        now=time.time(),
    )
    emitted = []
    try:
        for delivery in result.ready:
            event_id = emit_arrival(ledger, delivery)
            watch.mark_emitted(delivery, event_id, now=time.time())
            emitted.append({"location": delivery.location, "dataset": str(delivery.name),
                            "digest": str(delivery.digest), "event": event_id})  # fmt: skip
            print(f"arrived: {delivery.location} ('{delivery.name}', {str(delivery.digest)[:19]})")
    except ConfigError as exc:
        print(f"not reported yet (the next poll tries again): {exc}")
    finally:
        watch.save()
    for delivery, why in result.skipped:
        print(f"skipped {delivery.location}: {why}")
    for error in result.errors:
        print(f"cannot list: {error}")
    return result, emitted


@flow(name="watch", log_prints=True)
def watch(workspace: str, polls: int | None = None) -> list[dict[str, str]]:
    """Polls the watched sources and emits an event per new, complete signed delivery.

    Args:
        workspace: Workspace root (a worker refuses any other than its own).
        polls: Poll this many times (default: for ``triggers.watch_for``).

    Returns:
        The events emitted (location, dataset, digest, event id).
    """
    ledger = Ledger.load(Workspace(pinned_workspace(Path(workspace))))
    params = ledger.ws.params().triggers
    if not params.sources:
        raise ConfigError("triggers.sources is empty in params.yaml: nothing to watch")
    retries = ledger.ws.params().ingest.io_retries
    watcher = Watch(ledger.ws.watch_state_path, params, retries=retries)
    deadline = time.monotonic() + duration_seconds(params.watch_for)
    emitted: list[dict[str, str]] = []
    count = 0
    while True:
        _, new = poll_once(ledger, watcher)
        emitted += new
        count += 1
        if (polls is not None and count >= polls) or (
            polls is None and time.monotonic() + params.poll_interval > deadline
        ):
            break
        time.sleep(params.poll_interval)
    artifacts.publish_watch(emitted)
    return emitted
