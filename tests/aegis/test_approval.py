"""Promotion gates, and signed requests/approvals with every refusal (aegis.approval + store)."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest

from aegis import vcs
from aegis.approval import GateFailure, evaluate_gates, require_gates
from aegis.audit import AuditLog
from aegis.config import PromoteParams
from aegis.crypto.keys import load_private_key
from aegis.errors import RefusedError
from aegis.registry import approvals_review as review
from aegis.registry import approvals_store as store
from aegis.registry.promotion import record_approval, record_request
from aegis.trust_ops import change_status, new_key

GOOD = {
    "clean_acc": 0.95,
    "robust": {"worst_case": 0.6},
    "epsilon_spent": None,
    "mia": {"auc": 0.52},
    "flags": [],
}
PASSED = {"success": True}


def _rows(**kw):
    return {r.gate: r for r in evaluate_gates(params=PromoteParams(), **kw)}


def test_gates_all_pass_without_prod():
    rows = _rows(metrics=GOOD, validation=PASSED)
    assert all(r.passed for r in rows.values())
    assert rows["max_epsilon"].measured == "DP off"
    assert rows["max_regression"].measured == "no prod"
    assert require_gates(list(rows.values()))


@pytest.mark.parametrize(
    ("change", "gate"),
    [
        ({"clean_acc": 0.5}, "min_clean_acc"),
        ({"robust": {"worst_case": 0.1}}, "min_robust_acc"),
        ({"robust": {"worst_case": None}}, "min_robust_acc"),
        ({"mia": {"auc": 0.9}}, "max_mia_auc"),
        ({"mia": {"auc": None}}, "max_mia_auc"),
        ({"flags": ["gradient-masking"]}, "evaluation_flags"),
        ({"flags": None}, "evaluation_flags"),
        ({"epsilon_spent": 12.0}, "max_epsilon"),
    ],
)
def test_each_gate_fails_on_its_own(change, gate):
    rows = _rows(metrics={**GOOD, **change}, validation=PASSED)
    assert [r.gate for r in rows.values() if not r.passed] == [gate]
    with pytest.raises(GateFailure) as info:
        require_gates(list(rows.values()))
    assert info.value.check == "gates" and gate in str(info.value)
    assert len(info.value.rows) == len(rows)


def test_dp_gate_when_dp_is_on_and_epsilon_missing():
    rows = _rows(metrics=GOOD, validation=PASSED, dp=True)
    assert not rows["max_epsilon"].passed and rows["max_epsilon"].measured == "not measured"
    rows = _rows(metrics={**GOOD, "epsilon_spent": 3.0}, validation=PASSED)
    assert rows["max_epsilon"].passed and rows["max_epsilon"].threshold == "<= 10"


def test_validation_gate():
    for validation in ({"success": False}, {}):
        rows = _rows(metrics=GOOD, validation=validation)
        assert not rows["validation"].passed


def test_regression_against_prod():
    prod = {**GOOD, "clean_acc": 0.99, "robust": {"worst_case": 0.61}}
    rows = _rows(metrics=GOOD, validation=PASSED, prod_metrics=prod)
    assert not rows["max_regression_clean"].passed  # 0.04 > 0.02
    assert rows["max_regression_clean"].measured == "0.0400"
    assert rows["max_regression_robust"].passed  # 0.01
    better = _rows(metrics=GOOD, validation=PASSED, prod_metrics={**GOOD, "clean_acc": 0.9})
    assert better["max_regression_clean"].passed


def test_gate_failure_pickles():
    rows = list(_rows(metrics={**GOOD, "clean_acc": 0.1}, validation=PASSED).values())
    again = pickle.loads(pickle.dumps(GateFailure(rows)))
    assert again.rows == rows and again.check == "gates"


# -- signed requests and approvals ---------------------------------------------------------

V1 = store.Candidate("digits-model", "v1.0.0", "sha256:" + "a" * 64, "sha256:" + "b" * 64)
V2 = store.Candidate("digits-model", "v2.0.0", "sha256:" + "c" * 64, "sha256:" + "d" * 64)
PARAMS = PromoteParams()


@pytest.fixture
def people(env):
    """Approvers: bob and carol (other owners), eve (owner alice, like the operator)."""
    keys = env.root.parent / "keys"
    for name, owner in (("bob", "bob"), ("carol", "carol"), ("eve", "alice"), ("bob2", "bob")):
        new_key(
            env.ws, role="approver", name=name, owner=owner, out=keys / f"{name}.pem",
            admin_key=None,
        )  # fmt: skip
    return {p.stem: load_private_key(p) for p in keys.glob("*.pem")}


def _request(env, people, candidate=V1, ttl=3600):
    operator = people["operator"]
    entry = env.ws.trust().by_key_id(operator.key_id)
    return store.write_request(
        env.ws, candidate, operator=operator, requester=entry, gates=[], ttl_seconds=ttl
    )


def _approve(env, people, who, request, candidate=V1, decision="approve", reason=""):
    """A decision as `aegis approve` records it: signed file, commit, audit entry."""
    return record_approval(
        env.ws, candidate, request, approver=people[who], decision=decision, reason=reason
    )


def _count(env, request, candidate=V1, params=PARAMS):
    return review.count_approvals(env.ws, candidate, request, params)


def _forge(env, key, request, candidate=V1, *, audit=False, **body):
    """An approval file signed by ``key`` as an attacker holding it would write it."""
    doc = {
        "kind": store.APPROVAL_KIND, "model": candidate.model, "version": candidate.version,
        "candidate": candidate.model_digest, "evidence": candidate.evidence_digest,
        "request": request.digest, "decision": "approve", "reason": "",
        "approver": {"key_id": key.key_id, "owner": "?"}, "created": request.body["created"],
        **body,
    }  # fmt: skip
    path = store.version_dir(env.ws, candidate.model, candidate.version)
    path = path / f"approval-{key.key_id}.json"
    path.write_bytes(store._signed(key, doc))
    if audit:  # as if the audit append went through (it cannot for a retired key)
        env.ws.audit().append(
            actor=key.key_id, action="approval.granted", pipeline_key=env.ws.pipeline_key(),
            subjects={"request": request.digest, "approval": store.body_digest(doc)},
        )  # fmt: skip
    return path


def test_request_round_trip_and_tamper(env, people):
    request = _request(env, people)
    loaded = store.load_request(env.ws, V1.model, V1.version)
    assert loaded.digest == request.digest and loaded.requester_owner == "alice"
    assert loaded.binds(V1) and not loaded.binds(V2) and not loaded.expired()
    assert store.load_request(env.ws, V2.model, V2.version) is None
    doc = json.loads(request.path.read_text())
    doc["body"]["expires"] = "2999-01-01T00:00:00.000000Z"
    request.path.write_text(json.dumps(doc))
    with pytest.raises(RefusedError, match="signature does not verify") as info:
        store.load_request(env.ws, V1.model, V1.version)
    assert info.value.check == "approval"


def test_request_signed_by_non_operator_refused(env, people):
    directory = store.version_dir(env.ws, V1.model, V1.version)
    bob = people["bob"]
    entry = env.ws.trust().by_key_id(bob.key_id)
    store.write_request(env.ws, V1, operator=bob, requester=entry, gates=[], ttl_seconds=60)
    with pytest.raises(RefusedError, match="not a trusted operator"):
        store.load_request(env.ws, V1.model, V1.version)
    assert (directory / ".gitignore").read_text() == "/waiting.json\n"


def test_approval_counts_distinct_owners(env, people):
    request = _request(env, people)
    _approve(env, people, "bob", request)
    _approve(env, people, "bob2", request)  # same owner: one person
    two = PARAMS.model_copy(update={"approvals_required": 2})
    tally = _count(env, request, params=two)
    assert tally.approvers == ["bob"] and tally.missing == 1 and not tally.enough
    _approve(env, people, "carol", request)
    tally = _count(env, request, params=two)
    assert sorted(tally.approvers) == ["bob", "carol"] and tally.enough and not tally.ignored
    entry = [e for e in env.ws.audit().entries() if e.action == "approval.granted"][-1]
    approval = store.version_dir(env.ws, V1.model, V1.version) / (
        f"approval-{people['carol'].key_id}.json"
    )
    assert entry.subjects["approval"] == store.body_digest(json.loads(approval.read_text())["body"])
    assert "approval-" in vcs.git(env.root, "log", "-1", "--name-only", "--format=")


@pytest.mark.parametrize(
    ("who", "message"),
    [
        ("operator", "not a current approver"),
        ("supplier", "not a current approver"),
        ("eve", "requester's owner"),
    ],
)
def test_approver_refusals(env, people, who, message):
    request = _request(env, people)
    with pytest.raises(RefusedError, match=message) as info:
        _approve(env, people, who, request)
    assert info.value.check == "approval"
    assert not list(request.path.parent.glob("approval-*.json"))


def test_revoked_and_retired_approvers_refused(env, people):
    request = _request(env, people)
    change_status(env.ws, "bob", status="revoked", reason="lost laptop", admin_key=None)
    change_status(env.ws, "carol", status="retired", reason="rotated", admin_key=None)
    for who in ("bob", "carol"):
        with pytest.raises(RefusedError, match="not a current approver"):
            _approve(env, people, who, request)


def test_expired_request_refused(env, people):
    request = _request(env, people, ttl=0)
    assert request.expired()
    with pytest.raises(RefusedError, match="expired"):
        _approve(env, people, "bob", request)


def test_request_for_another_candidate_refused(env, people):
    request = _request(env, people, candidate=V1)
    rebuilt = store.Candidate(V1.model, V1.version, V1.model_digest, "sha256:" + "e" * 64)
    with pytest.raises(RefusedError, match="another candidate"):
        _approve(env, people, "bob", request, candidate=rebuilt)


def test_decision_is_final(env, people):
    request = _request(env, people)
    approval = _approve(env, people, "bob", request)
    with pytest.raises(RefusedError, match="already recorded"):
        _approve(env, people, "bob", request, decision="reject", reason="changed my mind")
    approval.path.unlink()  # the audit entry, not the file, records the decision
    with pytest.raises(RefusedError, match="already recorded"):
        _approve(env, people, "bob", request, decision="reject", reason="changed my mind")


def test_replayed_approval_from_another_version_ignored(env, people):
    r1 = _request(env, people, candidate=V1)
    r2 = _request(env, people, candidate=V2)
    approval = _approve(env, people, "bob", r1, candidate=V1)
    shutil.copy(approval.path, r2.path.parent / approval.path.name)
    tally = _count(env, r2, candidate=V2)
    assert tally.approvers == [] and not tally.rejected_by
    assert tally.ignored == ["bob (bob): ignored: bound to another candidate, evidence digest "
                             "or request (replayed)"]  # fmt: skip
    _approve(env, people, "carol", r2, candidate=V2)  # a planted file does not block the rest
    assert _count(env, r2, candidate=V2).approvers == ["carol"]


def test_replayed_approval_of_an_earlier_request_ignored(env, people):
    old = _request(env, people)
    approval = _approve(env, people, "bob", old)
    new = _request(env, people)  # a new request (approvals of the old one no longer count)
    assert new.digest != old.digest and approval.path.exists()
    tally = _count(env, new)
    assert tally.approvers == [] and "replayed" in tally.ignored[0]


def test_tampered_unsigned_or_unknown_key_ignored(env, people, tmp_path):
    from aegis.crypto.keys import generate_key

    request = _request(env, people)
    approval = _approve(env, people, "bob", request, decision="reject", reason="no")
    doc = json.loads(approval.path.read_text())
    doc["body"]["decision"] = "approve"
    approval.path.write_text(json.dumps(doc))
    (approval.path.parent / "approval-junk.json").write_text("{}")
    stranger = generate_key(tmp_path / "stranger.pem")
    _forge(env, stranger, request)
    tally = _count(env, request)
    assert tally.approvers == [] and tally.rejected_by == []
    text = "\n".join(tally.ignored)
    assert len(tally.ignored) == 3, text
    for reason in ("signature does not verify", "unreadable", "unknown key"):
        assert reason in text


def test_unaudited_approval_ignored(env, people):
    request = _request(env, people)
    store.write_approval(  # a file without its audit entry: never counts
        env.ws, V1, request, approver=people["bob"], decision="approve", reason=""
    )
    tally = _count(env, request)
    assert tally.approvers == [] and "no audit entry" in tally.ignored[0]
    _approve(env, people, "bob", request)  # replaced by an audited decision
    assert _count(env, request).approvers == ["bob"]


def test_rejection_and_revoked_approvals(env, people):
    request = _request(env, people)
    _approve(env, people, "bob", request)
    _approve(env, people, "carol", request, decision="reject", reason="flaky eval")
    tally = _count(env, request)
    assert tally.rejected_by == [("carol", "flaky eval")] and not tally.enough
    change_status(env.ws, "bob", status="revoked", reason="compromised", admin_key=None)
    tally = _count(env, request)
    assert tally.approvers == [] and tally.ignored == ["bob (bob): ignored: its key is revoked"]


def test_retired_approver_still_counts_what_it_signed_before(env, people):
    request = _request(env, people)
    _approve(env, people, "bob", request)
    change_status(env.ws, "bob", status="retired", reason="rotated", admin_key=None)
    assert _count(env, request).approvers == ["bob"]


def test_retired_approver_cannot_backdate(env, people):
    request = _request(env, people)
    change_status(env.ws, "bob", status="retired", reason="rotated", admin_key=None)
    # bob's key, retired, signs an approval dated before its retirement
    _forge(env, people["bob"], request)
    tally = _count(env, request)
    assert tally.approvers == [] and "no audit entry" in tally.ignored[0]
    # even with an audit entry: it comes after the audited retirement
    _forge(env, people["bob"], request, audit=True)
    tally = _count(env, request)
    assert tally.approvers == [] and "after its key was retired" in tally.ignored[0]


def test_approval_created_outside_the_request_lifetime_ignored(env, people):
    request = _request(env, people)
    for created in ("2000-01-01T00:00:00.000000Z", "2999-01-01T00:00:00.000000Z", "yesterday"):
        _forge(env, people["bob"], request, audit=True, created=created)
        tally = _count(env, request)
        assert tally.approvers == [] and "outside the request's lifetime" in tally.ignored[0]


def test_failed_audit_or_commit_removes_the_approval(env, people, monkeypatch):
    request = _request(env, people)
    path = store.version_dir(env.ws, V1.model, V1.version) / (
        f"approval-{people['bob'].key_id}.json"
    )
    real_append = AuditLog.append

    def failing_append(self, **kw):
        if kw["action"] == "approval.granted":
            raise OSError("disk full")
        return real_append(self, **kw)

    monkeypatch.setattr(AuditLog, "append", failing_append)
    with pytest.raises(OSError, match="disk full"):
        _approve(env, people, "bob", request)
    assert not path.exists()
    assert not vcs.git(env.root, "ls-files", "--", str(path)).strip()  # removal committed
    monkeypatch.setattr(AuditLog, "append", real_append)

    def failing_commit(*a, **kw):
        raise RuntimeError("git index locked")

    monkeypatch.setattr(vcs, "commit_paths", failing_commit)
    with pytest.raises(RuntimeError, match="index locked"):
        _approve(env, people, "bob", request)
    assert not path.exists()
    monkeypatch.undo()
    _approve(env, people, "bob", request)  # nothing recorded: bob may decide again
    assert _count(env, request).approvers == ["bob"]


def test_new_request_drops_old_approvals_only_once_recorded(env, people, monkeypatch):
    operator = people["operator"]
    requester = env.ws.trust().by_key_id(operator.key_id)

    def new_request():
        return record_request(env.ws, V1, operator, requester, [], PARAMS)

    old = new_request()
    approval = _approve(env, people, "bob", old)
    kept = old.path.read_bytes()
    real_append = AuditLog.append

    def failing_append(self, **kw):
        if kw["action"] == "approval.requested":
            raise OSError("disk full")
        return real_append(self, **kw)

    monkeypatch.setattr(AuditLog, "append", failing_append)
    with pytest.raises(OSError):
        new_request()
    assert old.path.read_bytes() == kept and approval.path.exists()  # as before
    assert store.load_request(env.ws, V1.model, V1.version).digest == old.digest
    assert not vcs.git(env.root, "status", "--porcelain", "--", str(old.path.parent)).strip()
    assert _count(env, old).approvers == ["bob"]
    monkeypatch.undo()
    new = new_request()
    assert new.digest != old.digest and not approval.path.exists()
    assert not vcs.git(env.root, "status", "--porcelain", "--", str(old.path.parent)).strip()


def test_waiting_marker(env):
    directory = store.version_dir(env.ws, V1.model, V1.version)
    directory.mkdir(parents=True)
    store.mark_waiting(env.ws, V1.model, V1.version, "run-1")
    assert store.waiting_run(env.ws, V1.model, V1.version) == "run-1"
    store.clear_waiting(env.ws, V1.model, V1.version, "run-2")  # not ours: kept
    assert store.waiting_run(env.ws, V1.model, V1.version) == "run-1"
    data = json.loads((directory / store.WAITING_FILE).read_text())
    (directory / store.WAITING_FILE).write_text(json.dumps({**data, "pid": 2**22 + 7}))
    assert store.waiting_run(env.ws, V1.model, V1.version) is None  # its process is gone
    store.clear_waiting(env.ws, V1.model, V1.version, "run-1")
    assert not (directory / store.WAITING_FILE).exists()
