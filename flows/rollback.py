"""The ``rollback`` flow: reconcile -> plan -> verify the target -> move prod.

The same steps as ``aegis rollback`` (which runs them directly, for speed),
as a Prefect flow for orchestration: a deployment, a schedule-free incident
button on a Prefect server, or a run from another flow.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prefect import flow

from aegis.ledger import Ledger
from aegis.registry.rollback import RollbackOutcome
from aegis.workspace import Workspace
from tasks.registry import move_prod, plan_rollback, reconcile_registry, verify_target


@flow(name="rollback", log_prints=True)
def rollback(
    workspace: str,
    reason: str,
    operator_key: str,
    to: str | None = None,
    model: str | None = None,
) -> RollbackOutcome:
    """Moves prod back to a verified earlier version and marks the current one bad.

    Args:
        workspace: Workspace root.
        reason: Why (audited).
        operator_key: Path of an active operator private key (the actor).
        to: Target ``name@vN``; default the latest earlier prod version not marked bad.
        model: Which model, when ``to`` is not given and several are registered.
    """
    ledger = Ledger.load(Workspace(Path(workspace)))
    reconciled = reconcile_registry(ledger)
    plan = plan_rollback(ledger, to, model, reason, operator_key)
    verified = verify_target(ledger, plan)
    outcome = move_prod(ledger, plan, verified)
    print(
        f"rolled back {outcome.model}: {outcome.from_version} -> {outcome.to_version} "
        f"({outcome.from_version} marked bad)"
    )
    return dataclasses.replace(outcome, reconciled=reconciled + outcome.reconciled)
