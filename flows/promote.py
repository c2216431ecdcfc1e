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

from aegis.config import duration_seconds
from aegis.errors import RefusedError
from aegis.ledger import Ledger
from aegis.pipeline.layout import Layout
from aegis.registry import approvals_store
from aegis.registry.promotion import PromotionOutcome
from aegis.workspace import Workspace
from tasks.registry import promote_release

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


@flow(name="promote", log_prints=True)
def promote(
    workspace: str, target: str, operator_key: str, wait: bool = False, resume: bool = False
) -> PromotionOutcome:
    """Promotes a release to prod once it passes the gates and is approved.

    Args:
        workspace: Workspace root.
        target: ``model@vN`` (or ``model#stage``).
        operator_key: Path of the requesting operator's private key.
        wait: Pause until approvals arrive or ``promote.wait_timeout`` passes.
        resume: Complete an existing pending request.

    Raises:
        RefusedError: Gates, verification, rejection, or (with ``wait``) the timeout.
    """
    from prefect.context import FlowRunContext
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    ws = Workspace(Path(workspace))
    ledger = Ledger.load(ws)
    outcome = promote_release(ledger, target, operator_key, resume)
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
            outcome = promote_release(ledger, target, operator_key, True)
            remaining = math.ceil(deadline - time.monotonic())
            if outcome.status != "pending":
                return outcome
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
