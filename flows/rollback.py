"""The ``rollback`` flow: reconcile -> plan -> verify the target -> move prod.

The same steps as ``aegis rollback`` (which runs them directly, for speed),
as a Prefect flow for orchestration: a deployment, a schedule-free incident
button on a Prefect server, or a run from another flow.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from prefect import flow

from aegis.ledger import Ledger
from aegis.registry.rollback import RollbackOutcome
from aegis.workspace import Workspace
from tasks import artifacts
from tasks.registry import (
    move_prod,
    operator_session,
    plan_rollback,
    reconcile_registry,
    verify_target,
)
from tasks.workspace import pinned_workspace

__all__ = ["operator_session", "rollback"]


@flow(name="rollback", log_prints=True)
def rollback(
    workspace: str,
    reason: str | None = None,
    to: str | None = None,
    model: str | None = None,
    request: dict[str, Any] | None = None,
) -> RollbackOutcome:
    """Moves prod back to a verified earlier version and marks the current one bad.

    Args:
        workspace: Workspace root (a worker refuses any other than its own).
        reason: Why (audited); with ``request``, the request's reason counts.
        to: Target ``name@vN``; default the latest earlier prod version not marked bad.
        model: Which model, when ``to`` is not given and several are registered.
        request: An operator-signed rollback request (``aegis rollback --sign-request``):
            how a deployment run, which holds no key, knows which operator asked.
    """
    ledger = Ledger.load(Workspace(pinned_workspace(Path(workspace))))
    reconciled = reconcile_registry(ledger)
    plan = plan_rollback(ledger, to, model, reason, request)
    verified = verify_target(ledger, plan)
    outcome = move_prod(ledger, plan, verified)
    artifacts.publish_rollback(outcome)
    print(
        f"rolled back {outcome.model}: {outcome.from_version} -> {outcome.to_version} "
        f"({outcome.from_version} marked bad)"
    )
    return dataclasses.replace(outcome, reconciled=reconciled + outcome.reconciled)
