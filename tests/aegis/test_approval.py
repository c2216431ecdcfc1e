"""Promotion gates, and signed requests/approvals with every refusal (aegis.approval + store)."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest

from aegis.approval import GateFailure, evaluate_gates, require_gates
from aegis.config import PromoteParams
from aegis.crypto.keys import load_private_key
from aegis.errors import RefusedError
from aegis.registry import approvals_store as store
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
    return store.write_approval(
        env.ws, candidate, request, approver=people[who], decision=decision, reason=reason
    )


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
    tally = store.count_approvals(
        env.ws, V1, request, PARAMS.model_copy(update={"approvals_required": 2})
    )
    assert tally.approvers == ["bob"] and tally.missing == 1 and not tally.enough
    _approve(env, people, "carol", request)
    tally = store.count_approvals(
        env.ws, V1, request, PARAMS.model_copy(update={"approvals_required": 2})
    )
    assert sorted(tally.approvers) == ["bob", "carol"] and tally.enough


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
    _approve(env, people, "bob", request)
    with pytest.raises(RefusedError, match="already recorded"):
        _approve(env, people, "bob", request, decision="reject", reason="changed my mind")


def test_replayed_approval_from_another_version_refused(env, people):
    r1 = _request(env, people, candidate=V1)
    r2 = _request(env, people, candidate=V2)
    approval = _approve(env, people, "bob", r1, candidate=V1)
    shutil.copy(approval.path, r2.path.parent / approval.path.name)
    with pytest.raises(RefusedError, match="replayed") as info:
        store.count_approvals(env.ws, V2, r2, PARAMS)
    assert info.value.check == "approval"


def test_replayed_approval_of_an_earlier_request_refused(env, people):
    old = _request(env, people)
    approval = _approve(env, people, "bob", old)
    kept = approval.path.read_bytes()
    new = _request(env, people)  # a new request drops the old approvals
    assert not approval.path.exists()
    approval.path.write_bytes(kept)
    with pytest.raises(RefusedError, match="replayed"):
        store.count_approvals(env.ws, V1, new, PARAMS)


def test_tampered_or_unsigned_approval_refused(env, people):
    request = _request(env, people)
    approval = _approve(env, people, "bob", request, decision="reject", reason="no")
    doc = json.loads(approval.path.read_text())
    doc["body"]["decision"] = "approve"
    approval.path.write_text(json.dumps(doc))
    with pytest.raises(RefusedError, match="signature does not verify"):
        store.count_approvals(env.ws, V1, request, PARAMS)
    approval.path.write_text("{}")
    with pytest.raises(RefusedError, match="unreadable"):
        store.count_approvals(env.ws, V1, request, PARAMS)


def test_rejection_and_revoked_approvals(env, people):
    request = _request(env, people)
    _approve(env, people, "bob", request)
    _approve(env, people, "carol", request, decision="reject", reason="flaky eval")
    tally = store.count_approvals(env.ws, V1, request, PARAMS)
    assert tally.rejected_by == [("carol", "flaky eval")] and not tally.enough
    change_status(env.ws, "bob", status="revoked", reason="compromised", admin_key=None)
    tally = store.count_approvals(env.ws, V1, request, PARAMS)
    assert tally.approvers == [] and tally.ignored == ["bob: approver, revoked"]


def test_retired_approver_still_counts_what_it_signed_before(env, people):
    request = _request(env, people)
    _approve(env, people, "bob", request)
    change_status(env.ws, "bob", status="retired", reason="rotated", admin_key=None)
    assert store.count_approvals(env.ws, V1, request, PARAMS).approvers == ["bob"]


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
