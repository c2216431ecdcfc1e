"""Journaled registry changes: intent -> tags -> done, abort on error, reconcile after a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import verify_log

from aegis import vcs
from aegis.errors import RefusedError, StalePlanError
from aegis.ledger import Ledger
from aegis.registry import journal, tags

MODEL = "m"
OPS = [("prod", False), ("prod", True), ("bad", False)]


@pytest.fixture
def ws(env):
    """A workspace with m@v1.0.0 holding prod (audited) and m@v2.0.0 registered."""
    ws = env.ws
    ledger = Ledger.load(ws)
    commits = []
    for n in (1, 2):
        (ws.root / f"f{n}").write_text(str(n))
        commits.append(vcs.commit_paths(ws.root, f"c{n}", [f"f{n}"]))
    planned = ["m@v1.0.0", "m@v2.0.0", "m#prod#1"]
    with journal.registry_change(
        ledger, action="test", actor=ws.meta()["pipeline_key"], tags=planned,
        commits=dict(zip(planned, [commits[0], commits[1], commits[0]], strict=True)),
    ):  # fmt: skip
        for n, commit in zip((1, 2), commits, strict=True):
            tags.register_version(ws, model=MODEL, version=f"v{n}.0.0", ref=commit, message="r")
        tags.assign_stage(ws, model=MODEL, version="v1.0.0", stage="prod", message="p")
    return ws


def _bound(ws, planned: list[str]) -> dict[str, str]:
    """The commits the swap's tags must point to: prod to v2, prod! and bad on v1."""
    state = tags.read_tags(ws, MODEL)
    v1, v2 = state.get("v1.0.0").commit, state.get("v2.0.0").commit
    return dict(zip(planned, [v2, v1, v1], strict=True))


def _swap(ws) -> None:
    """The body of a rollback-like change: prod v1 -> v2 in three tags, crash points between."""
    tags.assign_stage(ws, model=MODEL, version="v2.0.0", stage="prod", message="s")
    journal.crash_point("test.assign")
    tags.unassign_stage(ws, model=MODEL, version="v1.0.0", stage="prod", message="s")
    journal.crash_point("test.unassign")
    tags.assign_stage(ws, model=MODEL, version="v1.0.0", stage="bad", message="s")


def _actions(ws) -> list[str]:
    return [e.action for e in ws.audit().entries()]


def _change(ws, planned, **kwargs):
    return journal.registry_change(
        Ledger.load(ws), action="test", actor=ws.meta()["pipeline_key"], tags=planned,
        commits=_bound(ws, planned), **kwargs,
    )  # fmt: skip


def test_change_writes_intent_tags_done(ws):
    planned = tags.plan_stage_tags(ws, model=MODEL, ops=OPS)
    before = len(ws.audit().entries())
    with _change(ws, planned, subjects={"model": "sha256:x"}, details={"why": "t"}) as change:
        _swap(ws)
        change.details["extra"] = 1
    entries = ws.audit().entries()[before:]
    assert [e.action for e in entries] == ["test.intent", "test.done"]
    intent, done = entries
    assert intent.details == {"why": "t", "tags": planned, "tag_commits": _bound(ws, planned)}
    made = tags.tag_commits(ws, planned)
    assert made == _bound(ws, planned)
    assert done.details == {"extra": 1, "intent": intent.seq, "tag_commits": made}
    assert intent.subjects == done.subjects == {"model": "sha256:x"}
    assert Ledger.load(ws).open_intents() == []
    state = tags.read_registry(Ledger.load(ws), MODEL)
    assert (state.prod, state.bad) == ("v2.0.0", {"v1.0.0"})
    verify_log(ws)


def test_tag_messages_carry_the_intents_audit_anchor(ws):
    planned = tags.plan_stage_tags(ws, model=MODEL, ops=OPS)
    with _change(ws, planned) as change:
        for version, stage, unassign in (("v2.0.0", "prod", False), ("v1.0.0", "prod", True),
                                         ("v1.0.0", "bad", False)):  # fmt: skip
            call = tags.unassign_stage if unassign else tags.assign_stage
            call(ws, model=MODEL, version=version, stage=stage, message=change.message("s"))
    intent = next(e for e in reversed(ws.audit().entries()) if e.action == "test.intent")
    anchors = {(a.seq, a.hash) for a in vcs.audit_anchors(ws.root) if a.where.startswith("tag")}
    assert (intent.seq, intent.hash) in anchors


def test_exception_in_body_deletes_created_tags_and_aborts(ws):
    planned = tags.plan_stage_tags(ws, model=MODEL, ops=OPS)
    with pytest.raises(RefusedError), _change(ws, planned):
        tags.assign_stage(ws, model=MODEL, version="v2.0.0", stage="prod", message="s")
        raise RefusedError("test", "changed my mind")
    assert _actions(ws)[-2:] == ["test.intent", "test.aborted"]
    assert ws.audit().entries()[-1].details["deleted_tags"] == planned[:1]
    assert not any(tags.tag_exists(ws, t) for t in planned)
    state = tags.read_registry(Ledger.load(ws), MODEL)
    assert (state.prod, state.bad) == ("v1.0.0", set())
    assert Ledger.load(ws).open_intents() == []
    verify_log(ws)


def test_body_that_skips_a_planned_tag_is_aborted(ws):
    planned = tags.plan_stage_tags(ws, model=MODEL, ops=OPS)
    with (
        pytest.raises(RuntimeError, match="not created on their bound commits"),
        _change(ws, planned),
    ):
        tags.assign_stage(ws, model=MODEL, version="v2.0.0", stage="prod", message="s")
    assert _actions(ws)[-1] == "test.aborted"
    assert tags.read_registry(Ledger.load(ws), MODEL).prod == "v1.0.0"


def test_body_that_tags_another_commit_is_aborted(ws):
    planned = tags.plan_stage_tags(ws, model=MODEL, ops=OPS[:1])
    with pytest.raises(RuntimeError, match="bound commits"), journal.registry_change(
        Ledger.load(ws), action="test", actor=ws.meta()["pipeline_key"], tags=planned,
        commits={planned[0]: tags.read_tags(ws, MODEL).get("v2.0.0").commit},
    ):  # fmt: skip
        tags.assign_stage(ws, model=MODEL, version="v1.0.0", stage="prod", message="s")
    assert _actions(ws)[-1] == "test.aborted"
    assert not tags.tag_exists(ws, planned[0])


def test_stale_plan_is_refused_before_any_write(ws):
    planned = tags.plan_stage_tags(ws, model=MODEL, ops=OPS)
    bound = _bound(ws, planned)
    tags.assign_stage(ws, model=MODEL, version="v2.0.0", stage="prod", message="concurrent")
    before = _actions(ws)
    with (
        pytest.raises(StalePlanError) as info,
        journal.registry_change(
            Ledger.load(ws), action="test", actor=ws.meta()["pipeline_key"], tags=planned,
            commits=bound,
        ),
    ):  # fmt: skip
        raise AssertionError("the body must not run")
    assert info.value.check == "registry"
    assert _actions(ws) == before
    assert tags.tag_exists(ws, planned[0])  # the concurrent change's tag is not touched


_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path[:0] = [{tests!r}, {root_tests!r}]
    from test_journal import MODEL, OPS, _change, _swap
    from aegis.registry import journal, tags
    from aegis.workspace import Workspace

    ws = Workspace(Path({root!r}))
    planned = tags.plan_stage_tags(ws, model=MODEL, ops=OPS)
    with _change(ws, planned):
        _swap(ws)
    """
)


def _crash(ws, step: str) -> int:
    script = _SCRIPT.format(
        tests=str(Path(__file__).parent), root_tests=str(Path(__file__).parents[2]),
        root=str(ws.root),
    )  # fmt: skip
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
    open_ = Ledger.load(ws).open_intents()
    assert [e.action for e in open_] == ["test.intent"]
    planned = open_[0].details["tags"]
    notes = journal.reconcile(Ledger.load(ws))
    assert len(notes) == 1
    assert ("completed" if forward else "rolled back") in notes[0]
    last = ws.audit().entries()[-1]
    assert last.action == ("test.done" if forward else "test.aborted")
    assert last.details["intent"] == open_[0].seq and last.details["reconciled"] is True
    assert Ledger.load(ws).open_intents() == []
    assert all(tags.tag_exists(ws, t) == forward for t in planned)
    state = tags.read_registry(Ledger.load(ws), MODEL)
    expected = ("v2.0.0", {"v1.0.0"}) if forward else ("v1.0.0", set())
    assert (state.prod, state.bad) == expected
    assert journal.reconcile(Ledger.load(ws)) == []  # idempotent
    verify_log(ws)


# -- reconcile trusts the commits the log bound, never tag names (a hostile review's finding) --


@pytest.mark.slow
def test_hand_made_tags_of_a_crashed_change_pointing_elsewhere_are_rolled_back(ws):
    assert _crash(ws, "test.assign") == -signal.SIGKILL  # one of three tags made, then killed
    (intent,) = Ledger.load(ws).open_intents()
    planned = intent.details["tags"]
    v2 = tags.read_tags(ws, MODEL).get("v2.0.0").commit
    # the attacker makes the missing tags by hand, all on v2's commit (v1's would be right)
    for tag in planned[1:]:
        vcs.git(ws.root, "tag", "-a", "-m", "forged", tag, v2)
    notes = journal.reconcile(Ledger.load(ws))
    assert "rolled back" in notes[0] and "not on their audited commit" in notes[0]
    assert not any(tags.tag_exists(ws, t) for t in planned)
    last = ws.audit().entries()[-1]
    assert last.action == "test.aborted" and sorted(last.details["foreign_tags"]) == sorted(
        planned[1:]
    )
    state = tags.read_registry(Ledger.load(ws), MODEL)
    assert (state.prod, state.bad) == ("v1.0.0", set())


@pytest.mark.slow
def test_reconcile_never_runs_on_a_log_that_does_not_verify(ws):
    assert _crash(ws, "test.assign") == -signal.SIGKILL
    before = vcs.git(ws.root, "tag", "-l")
    log = ws.audit().log_path
    lines = log.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b"trust", b"trusT", 1)  # an edited entry
    log.write_bytes(b"".join(lines))
    with pytest.raises(RefusedError) as info:
        journal.reconcile(Ledger.load(ws))
    assert info.value.check == "audit"
    assert log.read_bytes() == b"".join(lines)  # nothing appended, nothing re-signed
    assert vcs.git(ws.root, "tag", "-l") == before  # no tag deleted


def test_crash_point_is_a_no_op_unless_named(monkeypatch):
    monkeypatch.setenv(journal.CRASH_ENV, "something.else")
    journal.crash_point("test.step")  # still alive
    monkeypatch.delenv(journal.CRASH_ENV)
    journal.crash_point("test.step")
