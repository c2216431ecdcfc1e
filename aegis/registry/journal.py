"""Crash-safe registry changes: an audited intent, the git tags, then done.

Each change to the registry (a release, a promotion, a rollback) runs under
the workspace lock and writes ``<action>.intent`` to the audit log naming
the exact tags it will create, then the tags, then ``<action>.done``. A
process that dies in between leaves an intent without an outcome; the next
registry command reconciles it before doing anything else: if every planned
tag exists the change completed and is closed as done, otherwise the tags it
did create are deleted and it is closed as aborted. Either way the registry
holds the whole change or none of it.

``AEGIS_CRASH_AT=<step>`` kills the process at a named step, so tests can
crash it at every one.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aegis.audit import AuditEntry
from aegis.errors import RefusedError
from aegis.registry import tags as registry_tags
from aegis.workspace import Workspace

CRASH_ENV = "AEGIS_CRASH_AT"


def crash_point(step: str) -> None:
    """Kills this process (SIGKILL: no cleanup runs) if ``$AEGIS_CRASH_AT`` names ``step``."""
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Change:
    """An open registry change: what it planned and its intent entry."""

    action: str
    intent: AuditEntry
    tags: list[str]
    details: dict[str, Any] = field(default_factory=dict)  # added to the done entry


def _append(ws: Workspace, *, actor: str, action: str, subjects=None, details=None) -> AuditEntry:
    return ws.audit().append(
        actor=actor,
        action=action,
        pipeline_key=ws.pipeline_key(),
        subjects=subjects or {},
        details=details or {},
    )


def open_intents(ws: Workspace) -> list[AuditEntry]:
    """Intent entries that have neither a done nor an aborted entry."""
    entries = ws.audit().entries()
    closed = {
        e.details.get("intent")
        for e in entries
        if e.action.endswith((".done", ".aborted")) and "intent" in e.details
    }
    return [e for e in entries if e.action.endswith(".intent") and e.seq not in closed]


def _reconcile_locked(ws: Workspace) -> list[str]:
    notes: list[str] = []
    pipeline = ws.meta()["pipeline_key"]
    for intent in open_intents(ws):
        action = intent.action.removesuffix(".intent")
        planned = list(intent.details.get("tags", []))
        present = [t for t in planned if registry_tags.tag_exists(ws, t)]
        closing = {"intent": intent.seq, "reconciled": True}
        if planned and len(present) == len(planned):
            _append(
                ws, actor=pipeline, action=f"{action}.done", subjects=intent.subjects,
                details={**closing, "tag_commits": registry_tags.tag_commits(ws, planned)},
            )  # fmt: skip
            notes.append(f"completed interrupted {action} (audit entry {intent.seq})")
        else:
            for tag in present:
                registry_tags.delete_tag(ws, tag)
            _append(
                ws, actor=pipeline, action=f"{action}.aborted", subjects=intent.subjects,
                details={**closing, "deleted_tags": present},
            )  # fmt: skip
            notes.append(f"rolled back interrupted {action} (audit entry {intent.seq})")
    return notes


def reconcile(ws: Workspace) -> list[str]:
    """Closes interrupted registry changes (see the module docstring); returns what it did."""
    with ws.lock():
        return _reconcile_locked(ws)


@contextlib.contextmanager
def registry_change(
    ws: Workspace,
    *,
    action: str,
    actor: str,
    tags: list[str],
    subjects: dict[str, str] | None = None,
    details: dict[str, Any] | None = None,
) -> Iterator[Change]:
    """Runs one registry change under the workspace lock, intent first, done last.

    The body must create exactly ``tags`` (in order) and must not take
    ``ws.lock()`` itself (the lock is not re-entrant). An exception in the body
    deletes the tags it created and records ``<action>.aborted``.

    Args:
        ws: The workspace.
        action: ``release``, ``promote`` or ``rollback`` (audit actions get suffixes).
        actor: Key id of who asked for the change.
        tags: The tag names the body will create.
        subjects: Digests the change is about (audited with intent and outcome).
        details: Facts audited with the intent.

    Yields:
        The open change; put extra facts for the done entry in ``change.details``.
    """
    with ws.lock():
        _reconcile_locked(ws)
        taken = [t for t in tags if registry_tags.tag_exists(ws, t)]
        if taken:  # planned before the lock, and another change got there first
            raise RefusedError(
                "registry", f"{action}: the registry changed meanwhile ({taken[0]}); run it again"
            )
        intent = _append(
            ws, actor=actor, action=f"{action}.intent", subjects=subjects,
            details={**(details or {}), "tags": tags},
        )  # fmt: skip
        change = Change(action=action, intent=intent, tags=list(tags))
        crash_point(f"{action}.intent")
        try:
            yield change
            missing = [t for t in tags if not registry_tags.tag_exists(ws, t)]
            if missing:
                raise RuntimeError(f"{action}: planned tags were not created: {missing}")
        except BaseException:
            created = [t for t in tags if registry_tags.tag_exists(ws, t)]
            for tag in created:
                registry_tags.delete_tag(ws, tag)
            _append(
                ws, actor=actor, action=f"{action}.aborted", subjects=subjects,
                details={"intent": intent.seq, "deleted_tags": created},
            )  # fmt: skip
            raise
        crash_point(f"{action}.done")
        _append(
            ws, actor=actor, action=f"{action}.done", subjects=subjects,
            details={
                **change.details, "intent": intent.seq,
                "tag_commits": registry_tags.tag_commits(ws, tags),
            },
        )  # fmt: skip
