"""Helpers for rollback, status and crash tests (importable as ``registry_helpers``).

``promote_in_turn`` assigns prod directly (a journaled change with GTO tags, as
promotion does after its gates and approvals): the rollback tests are about
rollback, and must not depend on approvals.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from aegis import vcs
from aegis.config import override_params
from aegis.registry import journal, tags

BIN = Path(sys.executable).parent
# Gates that any test release passes: promotion tests are about approvals and the registry.
LENIENT = {
    "min_clean_acc": 0.0,
    "min_robust_acc": 0.0,
    "max_epsilon": 100.0,
    "max_mia_auc": 1.0,
    "max_regression": 1.0,
}


def set_promote(env, **values) -> None:
    """Writes ``promote`` params (lenient gates plus ``values``) and commits them."""
    override_params(env.root / "params.yaml", {"promote": {**LENIENT, **values}})
    vcs.commit_paths(env.root, "test: promote params", ["params.yaml"])


def promote_in_turn(ws, model: str, versions: list[str]) -> None:
    """Makes each version prod in turn (unassigning the previous holder), as promotion does."""
    from aegis.ledger import Ledger

    ledger = Ledger.load(ws)
    actor = ws.meta()["pipeline_key"]
    for version in versions:
        state = tags.read_registry(ledger, model)
        previous = state.prod
        holders = [version] + ([previous] if previous else [])
        ops = [(tags.PROD, False)] + ([(tags.PROD, True)] if previous else [])
        planned = tags.plan_stage_tags(ws, model=model, ops=ops)
        commits = dict(zip(planned, [state.get(v).commit for v in holders], strict=True))
        with journal.registry_change(
            ledger, action="promote", actor=actor, tags=planned, commits=commits,
            details={"version": version},
        ) as change:  # fmt: skip
            message = change.message("test")
            tags.assign_stage(ws, model=model, version=version, stage=tags.PROD, message=message)
            if previous:
                tags.unassign_stage(
                    ws, model=model, version=previous, stage=tags.PROD, message=message
                )


def aegis(root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300):
    """Runs the installed ``aegis`` console script in a subprocess (a real process)."""
    return subprocess.run(
        [str(BIN / "aegis"), "--workspace", str(root), *map(str, args)],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_registry_consistent(ws, model: str) -> tags.RegistryState:
    """Exactly one prod; no open intents; every closed change's tags all there or all gone."""
    from aegis.ledger import Ledger

    ledger = Ledger.load(ws)
    state = tags.read_registry(ledger, model)
    holders = [v.version for v in state.versions if tags.PROD in v.stages]
    assert len(holders) == 1, holders
    assert state.prod == holders[0]
    assert ledger.open_intents() == []
    entries = ws.audit().entries()
    outcome = {
        e.details["intent"]: e.action.rsplit(".", 1)[1]
        for e in entries
        if e.action.endswith((".done", ".aborted")) and "intent" in e.details
    }
    intents = [e for e in entries if e.action.endswith(".intent")]
    for i, intent in enumerate(intents):
        planned = intent.details.get("tags", [])
        if outcome[intent.seq] == "done":
            assert all(tags.tag_exists(ws, t) for t in planned), (intent.action, planned)
        else:  # an aborted change's tag names are free again for a later change
            reused = {t for later in intents[i + 1 :] for t in later.details.get("tags", [])}
            left = [t for t in planned if t not in reused and tags.tag_exists(ws, t)]
            assert not left, (intent.action, left)
    ws.audit().verify(pipeline_public_key=ledger.pipeline_entry().public_key)
    return state
