"""Tasks of the ``promote`` and ``rollback`` flows: thin wrappers over ``aegis.registry``."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from aegis.ledger import Ledger
from aegis.registry import journal, promotion
from aegis.registry import rollback as rollback_core
from aegis.registry.targets import parse_target


@task(cache_policy=NO_CACHE)
def promote_release(
    ledger: Ledger, target: str, operator_key: str, resume: bool
) -> promotion.PromotionOutcome:
    """Verify, gates, request, count approvals; assigns prod when there are enough."""
    ledger.refresh()
    return promotion.promote(
        ledger, parse_target(target), operator_key_path=Path(operator_key), resume=resume
    )


@task(cache_policy=NO_CACHE)
def reconcile_registry(ledger: Ledger) -> list[str]:
    """Closes registry changes a crashed process left open."""
    return journal.reconcile(ledger)


@task(cache_policy=NO_CACHE)
def plan_rollback(
    ledger: Ledger, to: str | None, model: str | None, reason: str, operator_key: str
) -> rollback_core.RollbackPlan:
    """Resolves the actor, the current prod and the target version."""
    return rollback_core.plan_rollback(
        ledger,
        to=parse_target(to) if to else None,
        model=model,
        reason=reason,
        operator_key_path=Path(operator_key),
    )


@task(cache_policy=NO_CACHE)
def verify_target(ledger: Ledger, plan: rollback_core.RollbackPlan):
    """Fetches the target from DVC if needed and verifies it."""
    return rollback_core.verify_target(ledger, plan)


@task(cache_policy=NO_CACHE)
def move_prod(ledger: Ledger, plan: rollback_core.RollbackPlan, verified):
    """The journaled registry change: prod to the target, the old holder marked bad."""
    return rollback_core.apply_rollback(ledger, plan, verified)
