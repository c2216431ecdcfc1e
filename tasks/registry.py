"""Tasks of the promotion step: thin wrappers over :mod:`aegis.registry.promotion`."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from aegis.registry import promotion as core
from aegis.registry.targets import parse_target
from aegis.workspace import Workspace


@task(cache_policy=NO_CACHE)
def promote_release(
    workspace: str, target: str, operator_key: str, resume: bool
) -> core.PromotionOutcome:
    """Verify, gates, request, count approvals; assigns prod when there are enough."""
    return core.promote(
        Workspace(Path(workspace)),
        parse_target(target),
        operator_key_path=Path(operator_key),
        resume=resume,
    )
