"""Tasks of the ``promote`` and ``rollback`` flows: thin wrappers over ``aegis.registry``.

An operator's key reaches these flows only through :data:`OPERATOR_KEY`, a
context variable the CLI sets in its own process (``aegis promote``,
``aegis rollback``): never as a flow parameter, which any Prefect API user
could set. A deployment run holds no operator key: promote then only
completes a request an operator signed, and rollback only runs an
operator-signed rollback request.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from aegis.ledger import Ledger
from aegis.registry import journal, promotion, rollback_request
from aegis.registry import rollback as rollback_core
from aegis.registry.targets import parse_target

OPERATOR_KEY: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "aegis_operator_key", default=None
)


@contextlib.contextmanager
def operator_session(key_path: Path) -> Iterator[None]:
    """Flows called in this context act with the operator key at ``key_path`` (the CLI only)."""
    token = OPERATOR_KEY.set(key_path)
    try:
        yield
    finally:
        OPERATOR_KEY.reset(token)


@task(cache_policy=NO_CACHE)
def promote_release(ledger: Ledger, target: str, resume: bool) -> promotion.PromotionOutcome:
    """Verify, gates, request, count approvals; assigns prod when there are enough."""
    ledger.refresh()
    return promotion.promote(
        ledger, parse_target(target), operator_key_path=OPERATOR_KEY.get(), resume=resume
    )


@task(cache_policy=NO_CACHE)
def reconcile_registry(ledger: Ledger) -> list[str]:
    """Closes registry changes a crashed process left open."""
    return journal.reconcile(ledger)


@task(cache_policy=NO_CACHE)
def plan_rollback(
    ledger: Ledger,
    to: str | None,
    model: str | None,
    reason: str | None,
    request: dict[str, Any] | None,
) -> rollback_core.RollbackPlan:
    """Resolves the actor (the CLI's key, or a signed request), current prod and the target."""
    if request is not None:
        signed = rollback_request.verify_request(ledger, request)
        return rollback_core.plan_rollback(
            ledger, to=signed.to, model=signed.model, reason=signed.reason,
            operator_key_path=None, request=signed,
        )  # fmt: skip
    key = OPERATOR_KEY.get()
    if key is None:
        from aegis.errors import UsageError

        raise UsageError(
            "a rollback run holds no operator key: pass the `request` an operator signed "
            "(`aegis rollback --sign-request FILE`), or run `aegis rollback --key`"
        )
    return rollback_core.plan_rollback(
        ledger, to=parse_target(to) if to else None, model=model, reason=reason or "",
        operator_key_path=key,
    )  # fmt: skip


@task(cache_policy=NO_CACHE)
def verify_target(ledger: Ledger, plan: rollback_core.RollbackPlan):
    """Fetches the target from DVC if needed and verifies it."""
    return rollback_core.verify_target(ledger, plan)


@task(cache_policy=NO_CACHE)
def move_prod(ledger: Ledger, plan: rollback_core.RollbackPlan, verified):
    """The journaled registry change: prod to the target, the old holder marked bad."""
    return rollback_core.apply_rollback(ledger, plan, verified)
