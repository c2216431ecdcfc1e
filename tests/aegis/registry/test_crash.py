"""Crash tests: ``AEGIS_CRASH_AT`` at every step of a rollback and of a release.

Each run is a real ``aegis`` (or Python) process that SIGKILLs itself at the
named step; the next command (``aegis status``) reconciles. Then: exactly one
prod, GTO tags agree with the audit log (no open intent, a done change has all
its tags, an aborted one none), ``aegis audit verify`` passes and prod verifies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from registry_helpers import BIN, aegis, assert_registry_consistent, promote_in_turn

from aegis.registry import tags

pytestmark = pytest.mark.slow
V1, V2, V3 = "v1.0.0", "v2.0.0", "v3.0.0"


def _after_crash_checks(env, expected_prod: str) -> None:
    status = aegis(env.root, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert "reconciled" in status.stderr
    state = assert_registry_consistent(env.ws, env.model)
    assert state.prod == expected_prod
    audit = aegis(env.root, "audit", "verify")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    verify = aegis(env.root, "verify", f"{env.model}#prod")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    again = aegis(env.root, "status")
    assert again.returncode == 0 and "reconciled" not in again.stderr


@pytest.mark.parametrize(
    ("step", "completed"),
    [
        ("rollback.intent", False),
        ("rollback.assign", False),
        ("rollback.unassign", False),
        ("rollback.mark-bad", True),
        ("rollback.done", True),
    ],
)
def test_rollback_crash_at_every_step(released_env, step, completed):
    env = released_env
    promote_in_turn(env.ws, env.model, [V1, V2])
    crashed = aegis(
        env.root,
        "rollback",
        "--reason",
        "crash test",
        "--key",
        env.operator_key,
        env={"AEGIS_CRASH_AT": step},
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    _after_crash_checks(env, V1 if completed else V2)
    state = tags.read_registry(env.ledger(), env.model)
    assert state.bad == ({V2} if completed else set())
    last = [e for e in env.ws.audit().entries() if e.action.startswith("rollback.")][-1]
    assert last.action == ("rollback.done" if completed else "rollback.aborted")
    if not completed:  # the interrupted rollback can simply be run again
        done = aegis(env.root, "rollback", "--reason", "again", "--key", env.operator_key)
        assert done.returncode == 0, done.stderr
        assert_registry_consistent(env.ws, env.model)
        assert tags.read_registry(env.ledger(), env.model).prod == V1


_RELEASE = textwrap.dedent(
    """
    from pathlib import Path
    from aegis.ledger import Ledger
    from aegis.registry.release import build_release
    from aegis.workspace import Workspace

    ws = Workspace(Path({root!r}))
    build_release(Ledger.load(ws), "digits", actor=ws.meta()["pipeline_key"])
    """
)


@pytest.mark.parametrize(
    ("step", "completed"),
    [
        ("release.intent", False),
        ("release.commit", False),
        ("release.audit", False),  # release.created written, the tag not yet
        ("release.tag", True),
        ("release.done", True),
    ],
)
def test_release_crash_at_every_step(released_env, step, completed):
    env = released_env
    promote_in_turn(env.ws, env.model, [V1])
    crashed = subprocess.run(
        [sys.executable, "-c", _RELEASE.format(root=str(env.root))],
        env={**os.environ, "AEGIS_CRASH_AT": step},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    _after_crash_checks(env, V1)
    versions = [v.version for v in tags.read_registry(env.ledger(), env.model).versions]
    assert versions == ([V1, V2, V3] if completed else [V1, V2])
    created = [
        e.details["version"] for e in env.ws.audit().entries() if e.action == "release.created"
    ]
    if completed:
        assert created == [V1, V2, V3]
        verify = aegis(env.root, "verify", f"{env.model}@v3")
        assert verify.returncode == 0, verify.stdout + verify.stderr
    else:
        assert V3 not in versions
        assert (V3 in created) == (step == "release.audit")


def test_two_rollbacks_at_once_one_wins_registry_consistent(released_env):
    env = released_env
    promote_in_turn(env.ws, env.model, [V1, V2])
    args = ["--workspace", str(env.root), "rollback", "--reason", "race", "--key"]
    procs = [
        subprocess.Popen(
            [str(BIN / "aegis"), *args, str(env.operator_key)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    assert "rollback:" in loser or "registry:" in loser
    state = assert_registry_consistent(env.ws, env.model)
    assert state.prod == V1 and state.bad == {V2}
    dones = [e for e in env.ws.audit().entries() if e.action == "rollback.done"]
    assert len(dones) == 1
