"""The ``promote`` flow across processes: --wait resumed by `aegis approve`, --resume after
the process ended, two promotions at once, and a crash at every promotion step.

Every CLI call is a subprocess against the session Prefect server (``PREFECT_API_URL``),
so the waiting run and the approving process share one Prefect API, as in production.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import CliResult
from registry_helpers import set_promote

from aegis.ledger import Ledger
from aegis.pipeline.layout import Layout
from aegis.registry import approvals_store as store
from aegis.registry.promotion import approve, promote
from aegis.registry.tags import read_registry
from aegis.registry.targets import parse_target

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@pytest.fixture
def renv(released_env):
    set_promote(released_env)
    for n in (1, 2):
        metrics = json.loads((released_env.release_dir(n) / "metrics.json").read_text())
        if metrics.get("flags"):
            pytest.skip("the test releases carry evaluation flags (gate cannot pass)")
    return released_env


@pytest.fixture
def cli_env(prefect_server) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": prefect_server}


# Hang guards, not timing: on a loaded machine a flow run may take minutes to get going.
PATIENCE_S = 600


def aegis(env, cli_env, *args, extra=None, timeout: float = PATIENCE_S) -> CliResult:
    proc = subprocess.run(
        [str(BIN / "aegis"), "--workspace", str(env.root), *map(str, args)],
        env={**cli_env, **(extra or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def start(env, cli_env, *args, extra=None) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "aegis"), "--workspace", str(env.root), *map(str, args)],
        env={**cli_env, **(extra or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def start_waiting(renv, cli_env) -> subprocess.Popen:
    """Starts ``aegis promote v1 --wait``; returns once its run waits for approval (or ended)."""
    waiting = start(renv, cli_env, "promote", renv.v1, "--wait", "--key", renv.operator_key)
    try:
        wait_for(
            lambda: (
                store.waiting_run(Layout(renv.root), renv.model, "v1.0.0")
                or waiting.poll() is not None
            ),
            PATIENCE_S,
            "the promote run to wait",
        )
    except BaseException:
        waiting.kill()
        raise
    return waiting


def requested_and_approved(env, *targets: str) -> None:
    """Pending requests approved by bob (in-process core calls: fast setup)."""
    for target in targets:
        t = parse_target(target)
        assert promote(env.ledger(), t, operator_key_path=env.operator_key).status == "pending"
        approve(env.ledger(), t, approver_key_path=env.approver_key)


def promoted(env, target: str) -> None:
    requested_and_approved(env, target)
    outcome = promote(env.ledger(), parse_target(target), operator_key_path=env.operator_key)
    assert outcome.status == "promoted"


def assert_consistent(env, cli_env, prod: str | None) -> None:
    """Exactly one prod holder (the expected one), tags as GTO sees them, audit intact."""
    state = read_registry(env.ledger(), env.model)
    holders = [v.version for v in state.versions if "prod" in v.stages]
    assert state.prod == prod and holders == ([prod] if prod else [])
    gto = subprocess.run(
        [str(BIN / "gto"), "show", "-r", str(env.root), f"{env.model}#prod", "--ref"],
        capture_output=True,
        text=True,
    )
    assert gto.returncode == 0, gto.stderr
    if prod:
        assert gto.stdout.strip() == f"{env.model}@{prod}", gto.stdout
    audit = aegis(env, cli_env, "audit", "verify")
    assert audit.code == 0, audit.err
    assert Ledger.load(env.ws).open_intents() == []
    if prod:
        verify = aegis(env, cli_env, "verify", f"{env.model}#prod")
        assert verify.code == 0, verify.out + verify.err


def test_wait_resumed_by_approve_in_another_process(renv, cli_env):
    """Two owners required: the first approval resumes the run, which counts 1 of 2 and
    pauses again; the second resumes it and it promotes.

    Whenever the second approval arrives (the run paused again, or still on its way from
    the first resume to the next pause), the run counts it before it pauses: ``approve``
    then either resumed it or found it ended, and says which. No timing is assumed.
    """
    set_promote(renv, wait_timeout="900s", approvals_required=2)
    waiting = start_waiting(renv, cli_env)
    try:
        assert waiting.poll() is None, waiting.communicate()
        first = aegis(renv, cli_env, "approve", renv.v1, "--key", renv.approver_key)
        assert first.code == 0, first.err
        assert "resumed the waiting promote run" in first.out  # it cannot end on one of two
        second = aegis(renv, cli_env, "approve", renv.v1, "--key", renv.approver2_key)
        assert second.code == 0, second.err
        assert ("resumed the waiting promote run" in second.out) or (
            "had already ended (Completed)" in second.out
        ), second.out
        out, err = waiting.communicate(timeout=PATIENCE_S)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0, err
    assert "promoted" in out and "bob" in out and "carol" in out
    assert not (
        store.version_dir(Layout(renv.root), renv.model, "v1.0.0") / store.WAITING_FILE
    ).exists()
    assert_consistent(renv, cli_env, "v1.0.0")


def test_wait_across_processes_on_the_workspace_prefect_home(renv, cli_env):
    """Without PREFECT_API_URL both processes use the workspace's .aegis/prefect database."""
    set_promote(renv, wait_timeout="900s")
    local = {k: v for k, v in cli_env.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME")}
    waiting = subprocess.Popen(
        [str(BIN / "aegis"), "--workspace", str(renv.root), "promote", renv.v1, "--wait",
         "--key", str(renv.operator_key)],
        env=local, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(
            lambda: (
                store.waiting_run(Layout(renv.root), renv.model, "v1.0.0")
                or waiting.poll() is not None
            ),
            PATIENCE_S,
            "the promote run to wait",
        )
        approver = subprocess.run(
            [str(BIN / "aegis"), "--workspace", str(renv.root), "approve", renv.v1,
             "--key", str(renv.approver_key)],
            env=local, capture_output=True, text=True, timeout=PATIENCE_S,
        )  # fmt: skip
        assert approver.returncode == 0, approver.stderr
        assert "resumed the waiting promote run" in approver.stdout
        out, err = waiting.communicate(timeout=PATIENCE_S)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0 and "promoted" in out, err
    assert (renv.root / ".aegis" / "prefect").is_dir()
    assert_consistent(renv, cli_env, "v1.0.0")


def test_wait_times_out_and_changes_nothing(renv, cli_env):
    set_promote(renv, wait_timeout="3s")
    result = aegis(renv, cli_env, "promote", renv.v1, "--wait", "--key", renv.operator_key)
    assert result.code == 1, result.err
    assert "approval" in result.err and "wait_timeout (3s)" in result.err
    assert "waiting up to 3s for approval of digits-model@v1.0.0" in result.err
    assert store.latest_request(renv.ledger(), renv.model, "v1.0.0").request  # still pending
    assert_consistent(renv, cli_env, None)


def test_rejection_while_waiting_exits_1(renv, cli_env):
    set_promote(renv, wait_timeout="900s")
    waiting = start_waiting(renv, cli_env)
    try:
        args = ("approve", renv.v1, "--key", renv.approver_key, "--reject", "--reason", "too weak")
        assert aegis(renv, cli_env, *args).code == 0
        _, err = waiting.communicate(timeout=PATIENCE_S)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 1
    assert "rejected by bob: too weak" in err
    assert_consistent(renv, cli_env, None)


def test_pending_completed_by_resume_after_its_process_ended(renv, cli_env):
    set_promote(renv, wait_timeout="900s")
    waiting = start_waiting(renv, cli_env)
    waiting.send_signal(signal.SIGKILL)
    waiting.communicate()
    assert store.waiting_run(Layout(renv.root), renv.model, "v1.0.0") is None  # its process is gone
    result = aegis(renv, cli_env, "approve", renv.v1, "--key", renv.approver_key)
    assert result.code == 0 and "resumed" not in result.out
    result = aegis(renv, cli_env, "promote", renv.v1, "--resume", "--key", renv.operator_key)
    assert result.code == 0 and "promoted" in result.out, result.err
    assert_consistent(renv, cli_env, "v1.0.0")


def test_two_promotions_at_once(renv, cli_env):
    requested_and_approved(renv, renv.v1, renv.v2)
    procs = [
        start(renv, cli_env, "promote", target, "--resume", "--key", renv.operator_key)
        for target in (renv.v1, renv.v2)
    ]
    results = [(p.wait(PATIENCE_S), *p.communicate()) for p in procs]
    for code, out, err in results:
        # serialized (both promoted, one after the other) or refused cleanly
        assert code == 0 or (code == 1 and "registry" in err), (code, out, err)
    assert any(code == 0 for code, _, _ in results)
    state = read_registry(renv.ledger(), renv.model)
    assert state.prod in ("v1.0.0", "v2.0.0")
    assert_consistent(renv, cli_env, state.prod)
    promoted_count = sum(1 for e in renv.ws.audit().entries() if e.action == "promote.done")
    assert promoted_count == sum(1 for code, _, _ in results if code == 0)


@pytest.mark.parametrize(
    ("step", "forward"),
    [
        ("promote.intent", False),
        ("promote.assign", False),
        ("promote.unassign", True),
        ("promote.done", True),
    ],
)
def test_crash_at_every_step(renv, cli_env, step, forward):
    promoted(renv, renv.v1)
    requested_and_approved(renv, renv.v2)
    args = ("promote", renv.v2, "--resume", "--key", renv.operator_key)
    crashed = aegis(renv, cli_env, *args, extra={"AEGIS_CRASH_AT": step})
    assert crashed.code == -signal.SIGKILL, (crashed.code, crashed.err)
    assert len(renv.ledger().open_intents()) == 1
    again = aegis(renv, cli_env, *args)
    assert again.code == 0, again.err
    note = "completed interrupted promote" if forward else "rolled back interrupted promote"
    assert note in again.err
    assert ("already holds prod" if forward else "promoted") in again.out
    assert_consistent(renv, cli_env, "v2.0.0")
    state = read_registry(renv.ledger(), renv.model)
    assert state.prod_history == ["v1.0.0", "v2.0.0"]
