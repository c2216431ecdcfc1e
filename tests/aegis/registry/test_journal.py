"""Journaled registry changes: intent -> tags -> done, abort on error, reconcile after a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aegis import vcs
from aegis.errors import RefusedError
from aegis.registry import journal, tags

MODEL = "m"
OPS = [("prod", False), ("prod", True), ("bad", False)]


@pytest.fixture
def ws(env):
    """A workspace with m@v1.0.0 holding prod and m@v2.0.0 registered."""
    ws = env.ws
    for n in (1, 2):
        (ws.root / f"f{n}").write_text(str(n))
        commit = vcs.commit_paths(ws.root, f"c{n}", [f"f{n}"])
        tags.register_version(ws, model=MODEL, version=f"v{n}.0.0", ref=commit, message="r")
    tags.assign_stage(ws, model=MODEL, version="v1.0.0", stage="prod", message="p")
    return ws


def _swap(ws) -> None:
    """The body of a rollback-like change: prod v1 -> v2 in three tags, crash points between."""
    tags.assign_stage(ws, model=MODEL, version="v2.0.0", stage="prod", message="s")
    journal.crash_point("test.assign")
    tags.unassign_stage(ws, model=MODEL, version="v1.0.0", stage="prod", message="s")
    journal.crash_point("test.unassign")
    tags.assign_stage(ws, model=MODEL, version="v1.0.0", stage="bad", message="s")


def _actions(ws) -> list[str]:
    return [e.action for e in ws.audit().entries()]


def test_change_writes_intent_tags_done(ws):
    actor = ws.meta()["pipeline_key"]
    planned = tags.plan_stage_tags(ws, model=MODEL, ops=OPS)
    before = len(ws.audit().entries())
    with journal.registry_change(
        ws, action="test", actor=actor, tags=planned, subjects={"model": "sha256:x"},
        details={"why": "t"},
    ) as change:  # fmt: skip
        _swap(ws)
        change.details["extra"] = 1
    entries = ws.audit().entries()[before:]
    assert [e.action for e in entries] == ["test.intent", "test.done"]
    intent, done = entries
    assert intent.details == {"why": "t", "tags": planned}
    made = tags.tag_commits(ws, planned)
    assert set(made) == set(planned)
    assert done.details == {"extra": 1, "intent": intent.seq, "tag_commits": made}
    assert intent.subjects == done.subjects == {"model": "sha256:x"}
    assert journal.open_intents(ws) == []
    state = tags.read_registry(ws, MODEL, audited=False)
    assert (state.prod, state.bad) == ("v2.0.0", {"v1.0.0"})
    ws.verify_audit()


def test_exception_in_body_deletes_created_tags_and_aborts(ws):
    actor = ws.meta()["pipeline_key"]
    planned = tags.plan_stage_tags(ws, model=MODEL, ops=OPS)
    with (
        pytest.raises(RefusedError),
        journal.registry_change(ws, action="test", actor=actor, tags=planned),
    ):
        tags.assign_stage(ws, model=MODEL, version="v2.0.0", stage="prod", message="s")
        raise RefusedError("test", "changed my mind")
    assert _actions(ws)[-2:] == ["test.intent", "test.aborted"]
    assert ws.audit().entries()[-1].details["deleted_tags"] == planned[:1]
    assert not any(tags.tag_exists(ws, t) for t in planned)
    state = tags.read_registry(ws, MODEL, audited=False)
    assert (state.prod, state.bad) == ("v1.0.0", set())
    assert journal.open_intents(ws) == []
    ws.verify_audit()


def test_body_that_skips_a_planned_tag_is_aborted(ws):
    actor = ws.meta()["pipeline_key"]
    planned = tags.plan_stage_tags(ws, model=MODEL, ops=OPS)
    with (
        pytest.raises(RuntimeError, match="planned tags were not created"),
        journal.registry_change(ws, action="test", actor=actor, tags=planned),
    ):
        tags.assign_stage(ws, model=MODEL, version="v2.0.0", stage="prod", message="s")
    assert _actions(ws)[-1] == "test.aborted"
    assert tags.read_registry(ws, MODEL, audited=False).prod == "v1.0.0"


def test_stale_plan_is_refused_before_any_write(ws):
    actor = ws.meta()["pipeline_key"]
    planned = tags.plan_stage_tags(ws, model=MODEL, ops=OPS)
    tags.assign_stage(ws, model=MODEL, version="v2.0.0", stage="prod", message="concurrent")
    before = _actions(ws)
    with (
        pytest.raises(RefusedError) as info,
        journal.registry_change(ws, action="test", actor=actor, tags=planned),
    ):
        raise AssertionError("the body must not run")
    assert info.value.check == "registry"
    assert _actions(ws) == before
    assert tags.tag_exists(ws, planned[0])  # the concurrent change's tag is not touched


_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_journal import MODEL, OPS, _swap
    from aegis.registry import journal, tags
    from aegis.workspace import Workspace

    ws = Workspace(Path({root!r}))
    planned = tags.plan_stage_tags(ws, model=MODEL, ops=OPS)
    with journal.registry_change(ws, action="test", actor=ws.meta()["pipeline_key"], tags=planned):
        _swap(ws)
    """
)


def _crash(ws, step: str) -> int:
    script = _SCRIPT.format(tests=str(Path(__file__).parent), root=str(ws.root))
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, journal.CRASH_ENV: step},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode


@pytest.mark.slow
@pytest.mark.parametrize(
    ("step", "forward"),
    [
        ("test.intent", False),
        ("test.assign", False),
        ("test.unassign", False),
        ("test.done", True),
    ],
)
def test_reconcile_after_crash(ws, step, forward):
    assert _crash(ws, step) == -signal.SIGKILL
    open_ = journal.open_intents(ws)
    assert [e.action for e in open_] == ["test.intent"]
    planned = open_[0].details["tags"]
    notes = journal.reconcile(ws)
    assert len(notes) == 1
    assert ("completed" if forward else "rolled back") in notes[0]
    last = ws.audit().entries()[-1]
    assert last.action == ("test.done" if forward else "test.aborted")
    assert last.details["intent"] == open_[0].seq and last.details["reconciled"] is True
    assert journal.open_intents(ws) == []
    assert all(tags.tag_exists(ws, t) == forward for t in planned)
    state = tags.read_registry(ws, MODEL, audited=False)
    expected = ("v2.0.0", {"v1.0.0"}) if forward else ("v1.0.0", set())
    assert (state.prod, state.bad) == expected
    assert journal.reconcile(ws) == []  # idempotent
    ws.verify_audit()


def test_crash_point_is_a_no_op_unless_named(monkeypatch):
    monkeypatch.setenv(journal.CRASH_ENV, "something.else")
    journal.crash_point("test.step")  # still alive
    monkeypatch.delenv(journal.CRASH_ENV)
    journal.crash_point("test.step")
