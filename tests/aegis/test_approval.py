"""Promotion gates, and signed requests/approvals with every refusal (aegis.approval + store)."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
from helpers import pipeline_key

from aegis import vcs
from aegis.approval import GateFailure, evaluate_gates, require_gates
from aegis.audit import VerifiedLog
from aegis.config import PromoteParams, policy_digest
from aegis.crypto.documents import body_digest, sign_document
from aegis.crypto.keys import load_private_key
from aegis.errors import ConfigError, RefusedError
from aegis.ledger import APPROVAL_KIND
from aegis.pipeline.layout import Layout
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


TRUSTED = "digits@sha256:" + "a" * 64


def test_trusted_set_gates_hold_its_figures_to_the_thresholds():
    measured = GOOD | {"trusted": {"set": TRUSTED, "clean_acc": 0.95, "robust_acc": 0.6}}
    rows = _rows(metrics=measured, validation=PASSED, trusted_set=TRUSTED)
    assert all(rows[g].passed for g in ("trusted_set", "trusted_clean_acc", "trusted_robust_acc"))
    poisoned = GOOD | {"trusted": {"set": TRUSTED, "clean_acc": 0.5, "robust_acc": 0.6}}
    rows = _rows(metrics=poisoned, validation=PASSED, trusted_set=TRUSTED)
    assert not rows["trusted_clean_acc"].passed and rows["min_clean_acc"].passed


def test_a_candidate_not_measured_on_the_configured_trusted_set_fails_its_gate():
    rows = _rows(metrics=GOOD, validation=PASSED, trusted_set=TRUSTED)
    assert not rows["trusted_set"].passed and rows["trusted_set"].measured == "not measured"
    assert not rows["trusted_clean_acc"].passed  # a value not measured never passes
    other = GOOD | {"trusted": {"set": "digits@sha256:" + "b" * 64, "clean_acc": 1.0,
                                "robust_acc": 1.0}}  # fmt: skip
    assert not _rows(metrics=other, validation=PASSED, trusted_set=TRUSTED)["trusted_set"].passed
    assert "trusted_set" not in _rows(metrics=GOOD, validation=PASSED)


def test_a_backdoor_flag_refuses_promotion():
    rows = _rows(metrics=GOOD | {"flags": ["backdoor"]}, validation=PASSED)
    assert not rows["evaluation_flags"].passed and rows["evaluation_flags"].measured == "backdoor"


def test_gate_failure_pickles():
    rows = list(_rows(metrics={**GOOD, "clean_acc": 0.1}, validation=PASSED).values())
    again = pickle.loads(pickle.dumps(GateFailure(rows)))
    assert again.rows == rows and again.check == "gates"


# -- signed requests and approvals, counted from the audit log -------------------------------

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
            admin_key=env.admin_key,
        )  # fmt: skip
    return {p.stem: load_private_key(p) for p in keys.glob("*.pem")}


def _request(env, people, candidate=V1, params=PARAMS) -> store.ApprovalRequest:
    """A request as `aegis promote` records it: signed by the operator, audited, copied."""
    ledger = env.ledger()
    operator = people["operator"]
    requester = ledger.trust.by_key_id(operator.key_id)
    return record_request(ledger, candidate, operator, requester, [], params)


def _approve(env, people, who, request, candidate=V1, decision="approve", reason=""):
    """A decision as `aegis approve` records it: signed, audited, its copy committed."""
    return record_approval(
        env.ledger(), candidate, request, approver=people[who], decision=decision, reason=reason
    )


def _count(env, request, candidate=V1):
    return review.count_approvals(env.ledger(), candidate, request)


def _copy(env, key, candidate=V1):
    layout = Layout(env.root)
    return store.version_dir(layout, candidate.model, candidate.version) / store.approval_file(
        key.key_id
    )


def _forge_entry(env, key, action: str, body: dict, subjects: dict) -> None:
    """An audit entry holding ``body`` signed by ``key``, as if its append had gone through.

    Only the pipeline key can append, so this is what an insider holding it (or a
    bug) could write; the rules must still refuse what does not fit.
    """
    env.ws.audit().append(
        actor=key.key_id, action=action, pipeline_key=pipeline_key(env.ws), subjects=subjects,
        details={"signed": sign_document(key, body), "model_name": body.get("model"),
                 "version": body.get("version")},
    )  # fmt: skip


def _forge_approval(env, key, req, /, candidate=V1, **body):
    doc = {
        "kind": APPROVAL_KIND, "model": candidate.model, "version": candidate.version,
        "candidate": candidate.model_digest, "evidence": candidate.evidence_digest,
        "request": req.digest, "decision": "approve", "reason": "",
        "approver": {"key_id": key.key_id, "owner": "?"}, "created": req.body["created"],
        **body,
    }  # fmt: skip
    subjects = {"request": req.digest, "approval": body_digest(doc)}
    _forge_entry(env, key, "approval.granted", doc, subjects)


def test_request_is_kept_in_the_audit_log_and_its_file_is_a_copy(env, people):
    request = _request(env, people)
    status = store.latest_request(env.ledger(), V1.model, V1.version)
    assert status.request.digest == request.digest and status.request.requester_owner == "alice"
    assert request.binds(V1) and not request.binds(V2) and not request.expired()
    assert request.policy_digest == policy_digest(PARAMS)
    assert request.body["policy"]["approvals_required"] == PARAMS.approvals_required
    assert store.latest_request(env.ledger(), V2.model, V2.version).request is None
    copy = store.version_dir(Layout(env.root), V1.model, V1.version) / store.REQUEST_FILE
    doc = json.loads(copy.read_text())
    assert body_digest(doc["body"]) == request.digest
    doc["body"]["expires"] = "2999-01-01T00:00:00.000000Z"  # tampering with the copy ...
    copy.write_text(json.dumps(doc))
    again = store.latest_request(env.ledger(), V1.model, V1.version).request
    assert again.digest == request.digest  # ... changes nothing
    copy.unlink()
    assert store.latest_request(env.ledger(), V1.model, V1.version).request.digest == request.digest


def test_request_signed_by_a_non_operator_is_not_usable(env, people):
    bob = people["bob"]
    entry = env.ledger().trust.by_key_id(bob.key_id)
    body = store.request_body(V1, requester=entry, gates=[], params=PARAMS)
    _forge_entry(env, bob, "approval.requested", body, {"request": body_digest(body)})
    status = store.latest_request(env.ledger(), V1.model, V1.version)
    assert status.request is None and "not a trusted operator" in status.unusable


def test_a_request_from_before_policies_were_bound_counts_as_expired(env, people):
    operator = people["operator"]
    env.ws.audit().append(  # what Aegis 0.1 wrote: no signed document in the entry
        actor=operator.key_id, action="approval.requested", pipeline_key=pipeline_key(env.ws),
        subjects={"request": "sha256:" + "9" * 64},
        details={"model_name": V1.model, "version": V1.version},
    )  # fmt: skip
    status = store.latest_request(env.ledger(), V1.model, V1.version)
    assert status.request is None and "request again" in status.unusable


def test_approval_counts_distinct_owners(env, people):
    two = PARAMS.model_copy(update={"approvals_required": 2})
    request = _request(env, people, params=two)
    _approve(env, people, "bob", request)
    _approve(env, people, "bob2", request)  # same owner: one person
    tally = _count(env, request)
    assert tally.approvers == ["bob"] and tally.missing == 1 and not tally.enough
    _approve(env, people, "carol", request)
    tally = _count(env, request)
    assert sorted(tally.approvers) == ["bob", "carol"] and tally.enough and not tally.ignored
    entry = [e for e in env.ws.audit().entries() if e.action == "approval.granted"][-1]
    assert entry.details["signed"]["key_id"] == people["carol"].key_id
    assert entry.subjects["approval"] == body_digest(entry.details["signed"]["body"])
    assert json.loads(_copy(env, people["carol"]).read_text()) == entry.details["signed"]
    message = vcs.git(env.root, "log", "-1", "--format=%B")
    assert f"Aegis-Audit: {entry.seq} {entry.hash}" in message  # committed after its entry


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
    entries = len(env.ws.audit().entries())
    with pytest.raises(RefusedError, match=message) as info:
        _approve(env, people, who, request)
    assert info.value.check == "approval"
    assert len(env.ws.audit().entries()) == entries
    assert not store.stale_copies(Layout(env.root), V1.model, V1.version)


def test_revoked_and_retired_approvers_refused(env, people):
    request = _request(env, people)
    change_status(env.ws, "bob", status="revoked", reason="lost laptop", admin_key=env.admin_key)
    change_status(env.ws, "carol", status="retired", reason="rotated", admin_key=env.admin_key)
    for who in ("bob", "carol"):
        with pytest.raises(RefusedError, match="not a current approver"):
            _approve(env, people, who, request)


def test_expired_request_refused(env, people):
    operator = people["operator"]
    requester = env.ledger().trust.by_key_id(operator.key_id)
    body = {
        **store.request_body(V1, requester=requester, gates=[], params=PARAMS),
        "created": "2020-01-01T00:00:00.000000Z", "expires": "2020-01-04T00:00:00.000000Z",
    }  # fmt: skip
    _forge_entry(env, operator, "approval.requested", body, {"request": body_digest(body)})
    request = store.latest_request(env.ledger(), V1.model, V1.version).request
    assert request.expired()
    with pytest.raises(RefusedError, match="expired"):
        _approve(env, people, "bob", request)


def test_request_for_another_candidate_refused(env, people):
    request = _request(env, people, candidate=V1)
    rebuilt = store.Candidate(V1.model, V1.version, V1.model_digest, "sha256:" + "e" * 64)
    with pytest.raises(RefusedError, match="another candidate"):
        _approve(env, people, "bob", request, candidate=rebuilt)


def test_decision_is_final_whatever_happens_to_its_file(env, people):
    request = _request(env, people)
    _approve(env, people, "bob", request)
    with pytest.raises(RefusedError, match="already recorded"):
        _approve(env, people, "bob", request, decision="reject", reason="changed my mind")
    _copy(env, people["bob"]).unlink()  # the audit entry, not the file, records the decision
    with pytest.raises(RefusedError, match="already recorded"):
        _approve(env, people, "bob", request, decision="reject", reason="changed my mind")
    assert _count(env, request).approvers == ["bob"]


def test_an_audited_rejection_stands_when_its_file_is_deleted(env, people):
    request = _request(env, people)
    _approve(env, people, "bob", request, decision="reject", reason="flaky eval")
    _copy(env, people["bob"]).unlink()
    vcs.git(env.root, "commit", "-qam", "an attacker deletes the rejection")
    tally = _count(env, request)
    assert tally.rejected_by == [("bob", "flaky eval")] and not tally.enough


def test_planted_files_count_for_nothing_and_are_named_without_being_read(env, people):
    request = _request(env, people)
    folder = store.version_dir(Layout(env.root), V1.model, V1.version)
    _approve(env, people, "bob", request)
    other = _request(env, people, candidate=V2)
    # bob's signed copy replayed into another version's folder, junk, a FIFO, /dev/zero
    other_folder = store.version_dir(Layout(env.root), V2.model, V2.version)
    shutil.copy(_copy(env, people["bob"]), other_folder / _copy(env, people["bob"]).name)
    (folder / "approval-junk.json").write_text("{}")
    os.mkfifo(folder / "approval-fifo.json")
    (folder / "approval-zero.json").symlink_to("/dev/zero")
    assert _count(env, other, candidate=V2).approvers == []
    assert _count(env, request).approvers == ["bob"]
    verdicts = review.review_decisions(env.ledger(), V1, request)
    ignored = review.unaudited_files(Layout(env.root), V1, verdicts)
    assert sorted(n.split(":")[0] for n in ignored) == [
        "approval-fifo.json", "approval-junk.json", "approval-zero.json"
    ]  # fmt: skip
    assert all("no audited decision" in n for n in ignored)


def test_approvals_of_an_earlier_request_do_not_count_for_a_new_one(env, people):
    old = _request(env, people)
    _approve(env, people, "bob", old)
    new = _request(env, people)  # a new request: the copies of old approvals are removed
    assert new.digest != old.digest
    assert not _copy(env, people["bob"]).exists()
    assert _count(env, new).approvers == [] and _count(env, old).approvers == ["bob"]


def test_rejection_and_revoked_approvals(env, people):
    request = _request(env, people)
    _approve(env, people, "bob", request)
    _approve(env, people, "carol", request, decision="reject", reason="flaky eval")
    tally = _count(env, request)
    assert tally.rejected_by == [("carol", "flaky eval")] and not tally.enough
    change_status(env.ws, "bob", status="revoked", reason="compromised", admin_key=env.admin_key)
    tally = _count(env, request)
    assert tally.approvers == [] and tally.ignored == ["bob (bob): ignored: its key is revoked"]


def test_retired_approver_still_counts_what_it_signed_before(env, people):
    request = _request(env, people)
    _approve(env, people, "bob", request)
    change_status(env.ws, "bob", status="retired", reason="rotated", admin_key=env.admin_key)
    assert _count(env, request).approvers == ["bob"]


def test_retired_approver_cannot_backdate(env, people):
    request = _request(env, people)
    change_status(env.ws, "bob", status="retired", reason="rotated", admin_key=env.admin_key)
    # bob's retired key signs an approval dated before its retirement; even audited,
    # its entry comes after the audited retirement
    _forge_approval(env, people["bob"], request)
    tally = _count(env, request)
    assert tally.approvers == [] and "after its key was retired" in tally.ignored[0]


def test_approval_created_outside_the_request_lifetime_ignored(env, people):
    request = _request(env, people)
    for created in ("2000-01-01T00:00:00.000000Z", "2999-01-01T00:00:00.000000Z", "yesterday"):
        _forge_approval(env, people["bob"], request, created=created)
        tally = _count(env, request)
        assert tally.approvers == [] and "outside the request's lifetime" in tally.ignored[0]


def test_a_decision_signed_for_another_request_is_ignored(env, people):
    request = _request(env, people)
    _forge_approval(env, people["bob"], request, request="sha256:" + "7" * 64)
    assert _count(env, request).approvers == []  # the entry names this request; the body not


def test_failed_audit_records_no_approval(env, people, monkeypatch):
    request = _request(env, people)
    real_append = VerifiedLog.append

    def failing_append(self, **kw):
        if kw["action"] == "approval.granted":
            raise OSError("disk full")
        return real_append(self, **kw)

    monkeypatch.setattr(VerifiedLog, "append", failing_append)
    with pytest.raises(OSError, match="disk full"):
        _approve(env, people, "bob", request)
    assert not _copy(env, people["bob"]).exists()
    monkeypatch.undo()
    _approve(env, people, "bob", request)  # nothing recorded: bob may decide
    assert _count(env, request).approvers == ["bob"]


def test_a_failed_commit_of_the_copy_leaves_the_audited_decision_counting(env, people, monkeypatch):
    request = _request(env, people)

    def failing_commit(*a, **kw):
        raise ConfigError("git commit failed: index locked")

    monkeypatch.setattr(vcs, "commit_paths", failing_commit)
    _approve(env, people, "bob", request)  # the copy is not committed; the entry stands
    monkeypatch.undo()
    assert _count(env, request).approvers == ["bob"]


def test_waiting_marker(env):
    layout = Layout(env.root)
    directory = store.version_dir(layout, V1.model, V1.version)
    directory.mkdir(parents=True)
    store.mark_waiting(layout, V1.model, V1.version, "run-1")
    assert store.waiting_run(layout, V1.model, V1.version) == "run-1"
    store.clear_waiting(layout, V1.model, V1.version, "run-2")  # not ours: kept
    assert store.waiting_run(layout, V1.model, V1.version) == "run-1"
    data = json.loads((directory / store.WAITING_FILE).read_text())
    (directory / store.WAITING_FILE).write_text(json.dumps({**data, "pid": 2**22 + 7}))
    assert store.waiting_run(layout, V1.model, V1.version) is None  # its process is gone
    store.clear_waiting(layout, V1.model, V1.version, "run-1")
    assert not (directory / store.WAITING_FILE).exists()
    (directory / store.WAITING_FILE).symlink_to("/dev/zero")  # planted: names no run
    assert store.waiting_run(layout, V1.model, V1.version) is None
