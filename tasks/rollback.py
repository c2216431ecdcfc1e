"""Tasks of the ``rollback`` flow: thin wrappers over ``aegis.registry.rollback``."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from aegis.registry import journal
from aegis.registry import rollback as core
from aegis.registry.targets import parse_target
from aegis.workspace import Workspace


@task(cache_policy=NO_CACHE)
def reconcile_registry(workspace: str) -> list[str]:
    """Closes registry changes a crashed process left open."""
    return journal.reconcile(Workspace(Path(workspace)))


@task(cache_policy=NO_CACHE)
def plan_rollback(
    workspace: str, to: str | None, model: str | None, reason: str, operator_key: str
) -> core.RollbackPlan:
    """Resolves the actor, the current prod and the target version."""
    return core.plan_rollback(
        Workspace(Path(workspace)),
        to=parse_target(to) if to else None,
        model=model,
        reason=reason,
        operator_key_path=Path(operator_key),
    )


@task(cache_policy=NO_CACHE)
def verify_target(workspace: str, plan: core.RollbackPlan):
    """Fetches the target from DVC if needed and verifies it."""
    return core.verify_target(Workspace(Path(workspace)), plan)


@task(cache_policy=NO_CACHE)
def move_prod(workspace: str, plan: core.RollbackPlan, verified) -> core.RollbackOutcome:
    """The journaled registry change: prod to the target, the old holder marked bad."""
    return core.apply_rollback(Workspace(Path(workspace)), plan, verified)
