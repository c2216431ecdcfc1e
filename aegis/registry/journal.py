"""Crash-safe registry changes: an audited intent, the git tags, then done.

Each change to the registry (a release, a promotion, a rollback) runs under
the workspace lock and writes ``<action>.intent`` to the audit log naming
the exact tags it will create *and the commit each must point to*, then the
tags (their messages carry the intent's audit anchor), then ``<action>.done``.
A process that dies in between leaves an intent without an outcome; the next
registry command reconciles it, after the ledger verified the log, before
doing anything else:

- if every planned tag exists and points to the commit the log bound it to
  (the intent's, or for a release the commit its ``release.created`` named),
  the change completed and is closed as done;
- otherwise every planned tag that exists is deleted (a tag made by hand to
  the name of a planned one, pointing at another commit, counts for nothing),
  an aborted release's directory and commit are undone, and the change is
  closed as aborted.

Either way the registry holds the whole change or none of it.
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

from aegis import vcs
from aegis.audit import AuditEntry
from aegis.errors import StalePlanError
from aegis.ledger import Action, Ledger
from aegis.registry import tags as registry_tags

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

    def message(self, text: str) -> str:
        """A tag message carrying the intent's audit anchor (see :mod:`aegis.ledger`)."""
        return vcs.with_trailer(text, vcs.anchor_line(self.intent.seq, self.intent.hash))


def _close(ledger: Ledger, intent: AuditEntry, outcome: str, **details: Any) -> None:
    action = intent.action.removesuffix(".intent")
    ledger.append(
        f"{action}.{outcome}",
        actor=ledger.pipeline_entry().key_id,
        subjects=intent.subjects,
        details={"intent": intent.seq, "reconciled": True, **details},
    )


def _reconcile_locked(ledger: Ledger) -> list[str]:
    notes: list[str] = []
    ws = ledger.ws
    for intent in ledger.open_intents():
        action = intent.action.removesuffix(".intent")
        planned = [t for t in intent.details.get("tags", []) if isinstance(t, str)]
        bound = ledger.bound_commits(intent)
        present = registry_tags.tag_commits(ws, planned)
        on_bound = [t for t in planned if bound.get(t) is not None and present.get(t) == bound[t]]
        if planned and on_bound == planned:
            _close(ledger, intent, "done", tag_commits=present)
            notes.append(f"completed interrupted {action} (audit entry {intent.seq})")
            continue
        for tag in present:
            registry_tags.delete_tag(ws, tag)
        foreign = sorted(t for t, c in present.items() if bound.get(t) not in (None, c))
        if action == "release":
            from aegis.registry.release import undo_aborted_release

            undo_aborted_release(ledger, intent)
        _close(ledger, intent, "aborted", deleted_tags=sorted(present), foreign_tags=foreign)
        why = (
            f"; deleted tag(s) {', '.join(foreign)} not on their audited commit" if foreign else ""
        )
        notes.append(f"rolled back interrupted {action} (audit entry {intent.seq}){why}")
    return notes


def reconcile(ledger: Ledger) -> list[str]:
    """Closes interrupted registry changes (see the module docstring); returns what it did."""
    if not ledger.open_intents():
        return []
    with ledger.locked():
        return _reconcile_locked(ledger)


@contextlib.contextmanager
def registry_change(
    ledger: Ledger,
    *,
    action: str,
    actor: str,
    tags: list[str],
    commits: dict[str, str] | None = None,
    subjects: dict[str, str] | None = None,
    details: dict[str, Any] | None = None,
) -> Iterator[Change]:
    """Runs one registry change under the workspace lock, intent first, done last.

    The body must create exactly ``tags`` (in order), each on its bound
    commit. An exception in the body deletes the tags it created and records
    ``<action>.aborted``.

    Args:
        ledger: The workspace's ledger.
        action: ``release``, ``promote`` or ``rollback`` (audit actions get suffixes).
        actor: Key id of who asked for the change.
        tags: The tag names the body will create.
        commits: The commit each tag must point to, where known at planning
            (a release's commit is bound later by its ``release.created`` entry).
        subjects: Digests the change is about (audited with intent and outcome).
        details: Facts audited with the intent.

    Yields:
        The open change; put extra facts for the done entry in ``change.details``.

    Raises:
        StalePlanError: A planned tag exists already (another change got there first).
    """
    ws = ledger.ws
    with ledger.locked():
        _reconcile_locked(ledger)
        taken = [t for t in tags if registry_tags.tag_exists(ws, t)]
        if taken:  # planned before the lock, and another change got there first
            raise StalePlanError(
                f"{action}: the registry changed meanwhile ({taken[0]}); run it again"
            )
        intent = ledger.append(
            Action.intent(action), actor=actor, subjects=subjects,
            details={**(details or {}), "tags": tags, "tag_commits": dict(commits or {})},
        )  # fmt: skip
        change = Change(action=action, intent=intent, tags=list(tags))
        crash_point(f"{action}.intent")
        try:
            yield change
            made = registry_tags.tag_commits(ws, tags)
            bound = ledger.bound_commits(intent)
            wrong = [t for t in tags if made.get(t) is None or made.get(t) != bound.get(t)]
            if wrong:
                raise RuntimeError(f"{action}: tags not created on their bound commits: {wrong}")
        except BaseException:
            created = sorted(registry_tags.tag_commits(ws, tags))
            for tag in created:
                registry_tags.delete_tag(ws, tag)
            ledger.append(
                Action.aborted(action), actor=actor, subjects=subjects,
                details={"intent": intent.seq, "deleted_tags": created},
            )  # fmt: skip
            raise
        crash_point(f"{action}.done")
        ledger.append(
            Action.done(action), actor=actor, subjects=subjects,
            details={**change.details, "intent": intent.seq, "tag_commits": made},
        )  # fmt: skip
