"""The ``promote`` flow: verify -> gates -> signed request -> approvals -> prod.

With ``wait`` the flow run pauses (``pause_flow_run`` with a typed input) until
``aegis approve`` resumes it, in this or another process sharing the Prefect
server or ``PREFECT_HOME``. The audited decisions stay the source of truth: on
every resume the flow re-verifies the release, re-runs the gates and counts
the approvals again from the audit log. No lock is held while it waits.

An approval can arrive at any moment, also between a count and the next
pause. ``aegis approve`` therefore keeps trying to resume the run while it is
on its way to the pause (as long as its process lives), so the run always
counts a new decision before it pauses again; and the run counts once more
after marking itself waiting, so a decision recorded before the mark is seen.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

from prefect import flow
from prefect.input import RunInput

from aegis.approval import GateFailure
from aegis.config import duration_seconds
from aegis.errors import RefusedError
from aegis.ledger import Ledger
from aegis.pipeline.layout import Layout
from aegis.registry import approvals_store
from aegis.registry.promotion import PromotionOutcome
from aegis.workspace import Workspace
from tasks import artifacts
from tasks.heartbeats import short_run
from tasks.registry import operator_session, promote_release
from tasks.workspace import pinned_workspace

__all__ = ["ApprovalSignal", "operator_session", "promote", "resume_waiting", "short_run"]

RESUME_PATIENCE = 600.0  # seconds `aegis approve` waits at most for a run on its way to pause


class ApprovalSignal(RunInput):
    """What `aegis approve` sends a waiting run (a hint: the decisions are re-counted)."""

    approver: str = ""
    decision: str = "approve"


def _timeout_error(target: str, wait_timeout: str) -> RefusedError:
    return RefusedError(
        "approval",
        f"{target}: no sufficient approval within promote.wait_timeout ({wait_timeout}); "
        "prod is unchanged and the request stays pending (`aegis promote --resume` later)",
    )


def _name(target: str) -> tuple[str, str]:
    model, _, version = target.partition("@")
    return model, version or target


def _published(outcome: PromotionOutcome) -> PromotionOutcome:
    artifacts.publish_gates(outcome.model, outcome.version, outcome.gates, outcome.status)
    return outcome


@flow(name="promote", log_prints=True)
def promote(
    workspace: str, target: str, wait: bool = False, resume: bool = False
) -> PromotionOutcome:
    """Promotes a release to prod once it passes the gates and is approved.

    The operator's key comes from ``aegis promote`` (:data:`tasks.registry.OPERATOR_KEY`);
    a deployment run holds none and completes only a request an operator signed.

    Args:
        workspace: Workspace root (a worker refuses any other than its own).
        target: ``model@vN`` (or ``model#stage``).
        wait: Pause until approvals arrive or ``promote.wait_timeout`` passes.
        resume: Complete an existing pending request.

    Raises:
        RefusedError: Gates, verification, rejection, or (with ``wait``) the timeout.
    """
    from prefect.context import FlowRunContext
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    ws = Workspace(pinned_workspace(Path(workspace)))
    ledger = Ledger.load(ws)
    try:
        outcome = _published(promote_release(ledger, target, resume))
    except GateFailure as exc:  # the UI shows which gate failed, then the run fails
        artifacts.publish_gates(*_name(target), exc.rows, "refused by the gates")
        raise
    if outcome.status != "pending" or not wait:
        return outcome
    layout = Layout.of(ws)
    wait_timeout = ws.params().promote.wait_timeout
    deadline = time.monotonic() + duration_seconds(wait_timeout)
    context = FlowRunContext.get()
    run_id = str(context.flow_run.id) if context and context.flow_run else ""
    approvals_store.mark_waiting(layout, outcome.model, outcome.version, run_id)
    sys.stderr.write(
        f"waiting up to {wait_timeout} for approval of {outcome.model}@{outcome.version} "
        f"(flow run {run_id}; `aegis approve` resumes it)\n"
    )
    try:
        while True:
            # count again after marking, and after every resume (see the module docstring)
            outcome = promote_release(ledger, target, True)
            if outcome.status != "pending":
                return _published(outcome)
            remaining = math.ceil(deadline - time.monotonic())
            if remaining <= 0:
                raise _timeout_error(target, wait_timeout)
            try:
                pause_flow_run(wait_for_input=ApprovalSignal, timeout=remaining, poll_interval=1)
            except FlowPauseTimeout:
                raise _timeout_error(target, wait_timeout) from None
    finally:
        approvals_store.clear_waiting(layout, outcome.model, outcome.version, run_id)


def resume_waiting(
    flow_run_id: str,
    *,
    approver: str,
    decision: str,
    alive: Callable[[], bool],
    patience: float = RESUME_PATIENCE,
) -> tuple[str, str | None]:
    """Resumes the paused ``promote`` run ``flow_run_id`` (called by `aegis approve`).

    A run that is not paused at this moment is on its way to the pause (it is
    counting): it is tried again until it pauses, ends, or its process is gone.

    Args:
        flow_run_id: The waiting run.
        approver, decision: The hint sent with the resume.
        alive: Whether the waiting process still runs (its marker's pid).
        patience: Give up after this many seconds of a run that neither pauses nor ends.

    Returns:
        ``("resumed", None)``, ``("finished", <final state name>)``, ``("gone", None)``
        (its process died), ``("unknown", None)`` (this Prefect server does not know
        the run) or ``("not-paused", <state name>)`` after ``patience``.
    """
    from prefect import get_client
    from prefect.exceptions import FlowPauseTimeout, NotPausedError, ObjectNotFound
    from prefect.flow_runs import resume_flow_run

    run = UUID(flow_run_id)
    deadline = time.monotonic() + patience
    while True:
        try:
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(run).state
        except ObjectNotFound:
            return "unknown", None
        if state is not None and state.is_paused():
            try:
                resume_flow_run(run, run_input={"approver": approver, "decision": decision})
                return "resumed", None
            except NotPausedError:
                pass  # resumed by another approval in between: look again
            except FlowPauseTimeout:
                return "finished", "pause timed out"
        elif state is not None and state.is_final():
            return "finished", state.name
        elif not alive():
            return "gone", None
        if time.monotonic() >= deadline:
            return "not-paused", state.name if state is not None else None
        time.sleep(0.2)
