"""Promotion to prod (aegis.registry.promotion) and `aegis promote` / `aegis approve` via the CLI.

Gates are set per test in the workspace's ``params.yaml`` (the FAST_PARAMS test models
are small: the default thresholds would refuse them). Cross-process waiting, concurrency
and crash tests are in ``tests/flows/test_promote.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CliResult, verify_log
from registry_helpers import set_promote

from aegis import vcs
from aegis.approval import GateFailure
from aegis.config import PromoteParams, policy_digest
from aegis.errors import RefusedError
from aegis.registry import approvals_store as store
from aegis.registry.promotion import approve, gates_for, promote
from aegis.registry.tags import read_registry
from aegis.registry.targets import parse_target
from aegis.registry.verify import open_release


def no_flags(env, version: int) -> bool:
    metrics = json.loads((env.release_dir(version) / "metrics.json").read_text())
    return not metrics.get("flags")


@pytest.fixture
def renv(released_env):
    set_promote(released_env)
    if not (no_flags(released_env, 1) and no_flags(released_env, 2)):
        pytest.skip("the test releases carry evaluation flags (gate cannot pass)")
    return released_env


def _promote(env, target, **kw):
    return promote(env.ledger(), parse_target(target), operator_key_path=env.operator_key, **kw)


def _approve(env, target, key, **kw):
    return approve(env.ledger(), parse_target(target), approver_key_path=key, **kw)


def _no_request(env, version: str = "v1.0.0") -> bool:
    return store.latest_request(env.ledger(), env.model, version).request is None


def test_pending_then_approve_then_resume(renv):
    first = _promote(renv, renv.v1)
    assert first.status == "pending" and first.approvers == [] and first.required == 1
    request = renv.root / first.request
    assert request.is_file()
    assert "request.json" in vcs.git(renv.root, "log", "-1", "--name-only", "--format=")
    again = _promote(renv, renv.v1)  # the valid request is reused, not re-signed
    assert again.status == "pending" and again.expires == first.expires
    ok = _approve(renv, renv.v1, renv.approver_key)
    assert ok.decision == "approve" and ok.owner == "bob" and ok.approvers == ["bob"]
    assert ok.waiting_run is None
    done = _promote(renv, renv.v1, resume=True)
    assert done.status == "promoted" and done.previous_prod is None
    assert all(g.passed for g in done.gates)
    assert read_registry(renv.ledger(), renv.model).prod == "v1.0.0"
    assert _promote(renv, renv.v1).status == "already-prod"
    actions = [e.action for e in renv.ws.audit().entries()]
    for action in ("approval.requested", "approval.granted", "promote.intent", "promote.done"):
        assert action in actions
    verify_log(renv.ws)


def test_second_promotion_moves_prod(renv):
    for target in (renv.v1, renv.v2):
        _promote(renv, target)
        _approve(renv, target, renv.approver_key)
        outcome = _promote(renv, target, resume=True)
        assert outcome.status == "promoted"
    assert outcome.previous_prod == "v1.0.0"
    state = read_registry(renv.ledger(), renv.model)
    assert state.prod == "v2.0.0" and state.prod_history == ["v1.0.0", "v2.0.0"]
    assert [v.version for v in state.versions if "prod" in v.stages] == ["v2.0.0"]


def test_gate_failure_refuses_with_rows(renv):
    set_promote(renv, min_clean_acc=1.0)
    with pytest.raises(GateFailure) as info:
        _promote(renv, renv.v1)
    rows = {r.gate: r for r in info.value.rows}
    assert not rows["min_clean_acc"].passed and rows["min_clean_acc"].threshold == ">= 1"
    assert info.value.check == "gates"
    assert _no_request(renv)  # nothing requested


def test_regression_gate_against_prod(renv):
    def score(n):
        m = json.loads((renv.release_dir(n) / "metrics.json").read_text())
        return (m["clean_acc"], m["robust"]["worst_case"])

    s1, s2 = score(1), score(2)
    if s1 == s2:
        pytest.skip("v1 and v2 score the same")
    # prod = the version better on some accuracy; the other one regresses on it
    v1_ahead = max(a - b for a, b in zip(s1, s2, strict=True)) > 0
    better, worse = (renv.v1, renv.v2) if v1_ahead else (renv.v2, renv.v1)
    _promote(renv, better)
    _approve(renv, better, renv.approver_key)
    _promote(renv, better, resume=True)
    set_promote(renv, max_regression=0.0)
    with pytest.raises(GateFailure, match="max_regression"):
        _promote(renv, worse)


def test_bad_version_refused(renv):
    from registry_helpers import promote_in_turn

    from aegis.registry.rollback import rollback

    promote_in_turn(renv.ws, renv.model, ["v1.0.0", "v2.0.0"])
    rollback(renv.ledger(), to=None, reason="incident", operator_key_path=renv.operator_key)
    with pytest.raises(RefusedError, match="marked bad") as info:  # v2, rolled back from
        _promote(renv, renv.v2)
    assert info.value.check == "registry"


def test_resume_without_request_refused(renv):
    with pytest.raises(RefusedError, match="no promotion request") as info:
        _promote(renv, renv.v1, resume=True)
    assert info.value.check == "approval"


def test_approve_without_request_refused(renv):
    with pytest.raises(RefusedError, match="no promotion request"):
        _approve(renv, renv.v1, renv.approver_key)


def test_rejection_refuses_promotion(renv):
    _promote(renv, renv.v1)
    _approve(renv, renv.v1, renv.approver_key, reject=True, reason="robustness too low")
    with pytest.raises(RefusedError, match="rejected by bob: robustness too low"):
        _promote(renv, renv.v1, resume=True)
    assert read_registry(renv.ledger(), renv.model).prod is None


def test_a_rejection_stands_for_the_build_under_a_new_request(renv):
    """Re-requesting (another policy, a renewed expiry) never erases a rejection."""
    _promote(renv, renv.v1)
    _approve(renv, renv.v1, renv.approver_key, reject=True, reason="robustness too low")
    set_promote(renv, approvals_required=2)  # a new policy would otherwise ask anew
    for _ in range(2):
        with pytest.raises(RefusedError, match="a rejected build is not requested again") as info:
            _promote(renv, renv.v1)
        assert info.value.check == "approval"
    requests = store.all_requests(renv.ledger(), renv.model, "v1.0.0")
    assert len(requests) == 1  # nothing recorded by the refused attempts
    assert read_registry(renv.ledger(), renv.model).prod is None
    assert _promote(renv, renv.v2).status == "pending"  # another build is requested as usual


def test_a_request_made_after_a_rejection_by_an_older_aegis_cannot_promote(renv, monkeypatch):
    from aegis.registry import approvals_review

    _promote(renv, renv.v1)
    _approve(renv, renv.v1, renv.approver_key, reject=True, reason="robustness too low")
    set_promote(renv, approvals_required=1, approval_ttl="2h")  # another policy: a new request
    with monkeypatch.context() as patched:  # recorded as an Aegis without the check would
        patched.setattr(approvals_review, "standing_rejection", lambda ledger, candidate, **_: None)
        assert _promote(renv, renv.v1).status == "pending"
    _approve(renv, renv.v1, renv.approver2_key)
    with pytest.raises(RefusedError, match="rejected by bob \\(an earlier request\\)"):
        _promote(renv, renv.v1, resume=True)
    assert read_registry(renv.ledger(), renv.model).prod is None


def test_two_person_rule_needs_two_owners(renv):
    set_promote(renv, approvals_required=2)
    _promote(renv, renv.v1)
    _approve(renv, renv.v1, renv.approver_key)
    assert _promote(renv, renv.v1, resume=True).status == "pending"
    _approve(renv, renv.v1, renv.approver2_key)
    outcome = _promote(renv, renv.v1, resume=True)
    assert outcome.status == "promoted" and sorted(outcome.approvers) == ["bob", "carol"]


def test_a_resume_under_another_policy_is_refused(renv):
    _promote(renv, renv.v1)
    _approve(renv, renv.v1, renv.approver_key)
    set_promote(renv, min_clean_acc=1.0)  # the policy tightened while it waited
    with pytest.raises(RefusedError, match="policy") as info:
        _promote(renv, renv.v1, resume=True)
    assert info.value.check == "approval"
    with pytest.raises(GateFailure):  # a new request is made under the policy of now
        _promote(renv, renv.v1)
    assert read_registry(renv.ledger(), renv.model).prod is None


def test_a_weaker_policy_cannot_complete_a_request_approved_under_a_stronger_one(renv):
    set_promote(renv, approvals_required=2)
    _promote(renv, renv.v1)
    _approve(renv, renv.v1, renv.approver_key)
    set_promote(renv, approvals_required=1)  # the operator edits params.yaml
    with pytest.raises(RefusedError, match="policy"):
        _promote(renv, renv.v1, resume=True)
    with pytest.raises(RefusedError, match="policy"):  # and approving that request is refused
        _approve(renv, renv.v1, renv.approver2_key)
    pending = _promote(renv, renv.v1)  # a new request, bound to the new policy
    assert pending.status == "pending" and pending.approvers == []  # bob approved the old one
    assert read_registry(renv.ledger(), renv.model).prod is None


def test_the_request_binds_the_policy_and_approvers_see_it(renv):
    set_promote(renv, approvals_required=2)
    _promote(renv, renv.v1)
    request = store.latest_request(renv.ledger(), renv.model, "v1.0.0").request
    assert request.body["policy"]["approvals_required"] == 2
    assert request.policy_digest == policy_digest(renv.ws.params().promote)
    assert request.approvals_required == 2


def test_tampered_release_refused_before_request(renv):
    metrics = renv.release_dir(1) / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"clean_acc": 0', '"clean_acc": 1', 1))
    with pytest.raises(RefusedError) as info:
        _promote(renv, renv.v1)
    assert info.value.check in ("integrity", "signature")
    assert _no_request(renv)


def test_evidence_is_reread_through_its_signed_digest(renv):
    verified = open_release(renv.ledger(), parse_target(renv.v1))
    for name, text in (("validation.json", '{"success": true}'), ("params.yaml", "train: {}\n")):
        path = verified.directory / name
        kept = path.read_bytes()
        path.write_text(text)
        with pytest.raises(RefusedError) as info:
            gates_for(verified, PromoteParams(), None)
        assert info.value.check == "integrity" and name in str(info.value)
        path.write_bytes(kept)
    assert gates_for(verified, PromoteParams(), None)


@pytest.mark.parametrize("victim", ["validation.json", "metrics.json"])
def test_release_tampered_before_the_assignment_refused(renv, monkeypatch, victim):
    from aegis.registry import promotion

    for target in (renv.v1, renv.v2):
        _promote(renv, target)
        _approve(renv, target, renv.approver_key)
    assert _promote(renv, renv.v1, resume=True).status == "promoted"
    real = promotion._assign

    def tamper_then_assign(ws, verified, *args):
        path = verified.directory / victim  # after the first verification, before the lock
        path.write_bytes(path.read_bytes().replace(b"}", b"} ", 1))
        return real(ws, verified, *args)

    monkeypatch.setattr(promotion, "_assign", tamper_then_assign)
    with pytest.raises(RefusedError) as info:
        _promote(renv, renv.v2, resume=True)
    assert info.value.check == "integrity"
    assert read_registry(renv.ledger(), renv.model).prod == "v1.0.0"
    assert renv.ws.audit().entries()[-1].action == "promote.aborted"


def test_planted_approval_files_neither_count_nor_block_nor_hang(renv, tmp_path):
    from aegis.crypto.documents import sign_document
    from aegis.crypto.keys import generate_key
    from aegis.ledger import APPROVAL_KIND
    from aegis.pipeline.layout import Layout

    _promote(renv, renv.v1)
    request = store.latest_request(renv.ledger(), renv.model, "v1.0.0").request
    stranger = generate_key(tmp_path / "stranger.pem")
    body = {**request.body, "kind": APPROVAL_KIND, "request": request.digest,
            "decision": "reject", "reason": "planted",
            "approver": {"key_id": stranger.key_id, "owner": "mallory"}}  # fmt: skip
    folder = store.version_dir(Layout(renv.root), renv.model, "v1.0.0")
    (folder / f"approval-{stranger.key_id}.json").write_text(
        json.dumps(sign_document(stranger, body))
    )
    (folder / "approval-junk.json").write_text("not json")
    os.mkfifo(folder / "approval-fifo.json")  # a FIFO would hang a reader
    (folder / "approval-zero.json").symlink_to("/dev/zero")  # and this exhaust its memory
    (folder / "request.json").unlink()
    (folder / "request.json").symlink_to("/dev/zero")
    pending = _promote(renv, renv.v1, resume=True)
    assert pending.status == "pending" and pending.approvers == []
    _approve(renv, renv.v1, renv.approver_key)
    done = _promote(renv, renv.v1, resume=True)
    assert done.status == "promoted" and done.approvers == ["bob"]


def test_failed_audit_keeps_no_approval(renv, monkeypatch):
    from aegis.audit import VerifiedLog
    from aegis.pipeline.layout import Layout

    _promote(renv, renv.v1)
    real = VerifiedLog.append

    def failing(self, **kw):
        if kw["action"].startswith("approval."):
            raise OSError("disk full")
        return real(self, **kw)

    monkeypatch.setattr(VerifiedLog, "append", failing)
    with pytest.raises(OSError):
        _approve(renv, renv.v1, renv.approver_key)
    folder = store.version_dir(Layout(renv.root), renv.model, "v1.0.0")
    assert not list(folder.glob("approval-*.json"))
    assert not vcs.git(renv.root, "status", "--porcelain", "--", str(folder)).strip()


# -- the CLI ------------------------------------------------------------------------------

BIN = Path(sys.executable).parent


@pytest.fixture
def aegis(prefect_server):
    """Runs ``aegis ARGS`` as a subprocess against the session Prefect server."""

    def run(*args, env: dict[str, str] | None = None, timeout: float = 600) -> CliResult:
        proc = subprocess.run(
            [str(BIN / "aegis"), *map(str, args)],
            env={**os.environ, "PREFECT_API_URL": prefect_server, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


def test_cli_refusals_exit_1_naming_the_check(renv, cli, aegis):
    w = ("--workspace", renv.root)
    assert aegis(*w, "promote", renv.v1, "--key", renv.operator_key).code == 0
    cases = [
        (renv.operator_key, "not a current approver"),
        (renv.supplier_key, "not a current approver"),
    ]
    for key, message in cases:
        result = cli(*w, "approve", renv.v1, "--key", key)
        assert result.code == 1 and "approval" in result.err and message in result.err
    # an approver whose owner is the requester's (alice)
    from aegis.trust_ops import new_key

    eve = renv.root.parent / "keys" / "eve.pem"
    new_key(renv.ws, role="approver", name="eve", owner="alice", out=eve, admin_key=renv.admin_key)
    result = cli(*w, "approve", renv.v1, "--key", eve)
    assert result.code == 1 and "requester's owner" in result.err
    result = cli(*w, "approve", renv.v1, "--key", renv.approver_key, "--reject")
    assert result.code == 2 and "--reason" in result.err


def test_cli_expired_request_refused(renv, cli, aegis):
    set_promote(renv, approval_ttl="1s")
    w = ("--workspace", renv.root)
    assert aegis(*w, "promote", renv.v1, "--key", renv.operator_key).code == 0
    import time

    time.sleep(1.2)
    result = cli(*w, "approve", renv.v1, "--key", renv.approver_key)
    assert result.code == 1 and "expired" in result.err
    result = aegis(*w, "promote", renv.v1, "--resume", "--key", renv.operator_key)
    assert result.code == 1 and "expired" in result.err


def test_cli_replayed_files_change_nothing(renv, cli, aegis):
    from aegis.pipeline.layout import Layout

    w = ("--workspace", renv.root)
    for target in (renv.v1, renv.v2):
        assert aegis(*w, "promote", target, "--key", renv.operator_key).code == 0
    assert cli(*w, "approve", renv.v1, "--key", renv.approver_key).code == 0
    v1_dir = store.version_dir(Layout(renv.root), renv.model, "v1.0.0")
    v2_dir = store.version_dir(Layout(renv.root), renv.model, "v2.0.0")
    for path in v1_dir.glob("approval-*.json"):
        (v2_dir / path.name).write_bytes(path.read_bytes())
    result = aegis(*w, "promote", renv.v2, "--resume", "--key", renv.operator_key)
    assert result.code == 0 and "pending" in result.out  # does not count, does not block
    status = cli(*w, "status", "--json")
    v2 = json.loads(status.out)["models"][0]["versions"][1]
    assert v2["approvals"]["approved_by"] == []
    assert any("no audited decision" in n for n in v2["approvals"]["ignored"])
    # a request copied from another version is only a file: v2's audited request is used
    (v2_dir / "request.json").write_bytes((v1_dir / "request.json").read_bytes())
    result = cli(*w, "approve", renv.v2, "--key", renv.approver2_key, "--json")
    assert result.code == 0, result.err
    decision = [e for e in renv.ws.audit().entries() if e.action == "approval.granted"][-1]
    v2_request = store.latest_request(renv.ledger(), renv.model, "v2.0.0").request
    assert decision.subjects["request"] == v2_request.digest
    assert read_registry(renv.ledger(), renv.model).prod is None


def test_cli_gate_failure_table(renv, aegis):
    set_promote(renv, min_clean_acc=1.0)
    result = aegis("--workspace", renv.root, "promote", renv.v1, "--key", renv.operator_key)
    assert result.code == 1
    text = result.out + result.err
    for word in ("gate", "measured", "threshold", "min_clean_acc", ">= 1", "FAIL", "pass"):
        assert word in text
    assert "refused: gates:" in result.err


def test_cli_pending_approve_resume(renv, cli, aegis):
    w = ("--workspace", renv.root)
    result = aegis(*w, "promote", renv.v1, "--key", renv.operator_key)
    assert result.code == 0 and "pending" in result.out, result.err
    result = cli(*w, "approve", renv.v1, "--key", renv.approver_key)
    assert result.code == 0 and "approved" in result.out
    result = aegis(*w, "promote", renv.v1, "--resume", "--key", renv.operator_key)
    assert result.code == 0 and "promoted" in result.out
    assert read_registry(renv.ledger(), renv.model).prod == "v1.0.0"
    result = aegis(*w, "promote", renv.v1, "--wait", "--resume", "--key", renv.operator_key)
    assert result.code == 2


def test_promoting_a_version_again_needs_a_new_request_and_new_approvals(renv):
    from registry_helpers import promote_in_turn

    for target in (renv.v1, renv.v2):
        _promote(renv, target)
        _approve(renv, target, renv.approver_key)
        assert _promote(renv, target, resume=True).status == "promoted"
    promote_in_turn(renv.ws, renv.model, ["v1.0.0"])  # prod back on v1 (as a rollback does)
    again = _promote(renv, renv.v2)  # the spent request's approval does not count again
    assert again.status == "pending" and again.approvers == []
    assert _approve(renv, renv.v2, renv.approver_key).approvers == ["bob"]
    assert _promote(renv, renv.v2, resume=True).status == "promoted"
