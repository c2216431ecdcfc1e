"""``registry_status`` and the ``aegis status`` / ``aegis rollback`` commands."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from registry_helpers import promote_in_turn

from aegis.config import PromoteParams
from aegis.crypto.keys import load_private_key
from aegis.registry import approvals_store as store
from aegis.registry import tags
from aegis.registry.promotion import record_approval, record_request
from aegis.registry.status import registry_status
from aegis.registry.targets import Target
from aegis.registry.verify import open_release

V1, V2 = "v1.0.0", "v2.0.0"


def _approvals(env, version: str) -> None:
    """A signed request by the operator (alice), approved by bob, rejected by carol."""
    ledger = env.ledger()
    candidate = store.Candidate.of(open_release(ledger, Target(env.model, version=version)))
    operator = load_private_key(env.operator_key)
    requester = ledger.trust.by_key_id(operator.key_id)
    request = record_request(ledger, candidate, operator, requester, [], PromoteParams())
    for key, decision in ((env.approver_key, "approve"), (env.approver2_key, "reject")):
        record_approval(
            env.ledger(), candidate, request, approver=load_private_key(key), decision=decision,
            reason="t",
        )  # fmt: skip


def test_status_of_two_releases(released_env):
    env = released_env
    promote_in_turn(env.ws, env.model, [V1, V2])
    _approvals(env, V2)
    (model,), _ = registry_status(env.ledger())
    assert model.model == env.model and model.prod == V2 and model.bad == []
    assert model.prod_history == [V1, V2]
    v1, v2 = model.versions
    assert (v1.version, v2.version) == (V1, V2)
    assert (v1.stages, v2.stages) == ([], ["prod"])
    assert (v1.prod, v2.prod) == (False, True)
    for v, n in ((v1, 1), (v2, 2)):
        info = json.loads((env.release_dir(n) / "release.json").read_text())
        metrics = json.loads((env.release_dir(n) / "metrics.json").read_text())
        assert v.present and v.model_digest == info["model_digest"]
        assert v.created == info["created"]
        assert v.clean_acc == metrics["clean_acc"]
        assert v.robust_acc == metrics["robust"]["worst_case"]
        assert v.epsilon == metrics.get("epsilon_spent")
        assert v.signer == "pipeline (aegis)"
        assert v.evidence_digest and v.evidence_digest.startswith("sha256:")
    assert not v1.approvals.requested
    a = v2.approvals
    assert a.requested and a.requester == "alice" and not a.expired
    assert (a.approved_by, a.rejected_by, a.ignored) == (["bob"], ["carol"], [])


def test_status_after_rollback_and_missing_directory(released_env):
    env = released_env
    promote_in_turn(env.ws, env.model, [V1, V2])
    from aegis.registry.rollback import rollback

    rollback(env.ledger(), to=None, reason="r", operator_key_path=env.operator_key)
    shutil.rmtree(env.release_dir(2))
    (model,), _ = registry_status(env.ledger())
    assert model.prod == V1 and model.bad == [V2]
    v1, v2 = model.versions
    assert v1.stages == ["prod"] and v2.stages == ["bad"] and v2.bad
    assert not v2.present and v2.clean_acc is None
    assert v2.model_digest and v2.evidence_digest  # from the audit log


def test_files_in_the_approvals_folder_are_named_but_never_counted(released_env, tmp_path):
    from aegis.crypto.documents import sign_document
    from aegis.crypto.keys import generate_key

    env = released_env
    _approvals(env, V1)
    folder = env.root / ".aegis" / "approvals" / env.model / V1
    bob = folder / f"approval-{load_private_key(env.approver_key).key_id}.json"
    doc = json.loads(bob.read_text())
    stranger = generate_key(tmp_path / "stranger.pem")
    forged = {**doc["body"], "approver": {"key_id": stranger.key_id, "owner": "mallory"}}
    (folder / f"approval-{stranger.key_id}.json").write_text(
        json.dumps(sign_document(stranger, forged))
    )
    (folder / "approval-junk.json").write_text("not json")
    os.mkfifo(folder / "approval-fifo.json")
    a = registry_status(env.ledger())[0][0].versions[0].approvals
    assert (a.approved_by, a.rejected_by) == (["bob"], ["carol"])
    assert len(a.ignored) == 3 and all("no audited decision" in note for note in a.ignored)
    # bob's own file replaced by another valid signature of his: the audited one counts
    bob.unlink()
    bob.write_text(json.dumps(sign_document(load_private_key(env.approver_key), forged)))
    a = registry_status(env.ledger())[0][0].versions[0].approvals
    assert a.approved_by == ["bob"]
    # the request file tampered with, even deleted: the audited request is shown
    (folder / "request.json").unlink()
    a = registry_status(env.ledger())[0][0].versions[0].approvals
    assert a.requested and a.requester == "alice" and not a.expired


def test_a_request_from_before_policies_is_shown_as_expired(released_env):
    from helpers import pipeline_key

    env = released_env
    env.ws.audit().append(
        actor=load_private_key(env.operator_key).key_id, action="approval.requested",
        pipeline_key=pipeline_key(env.ws), subjects={"request": "sha256:" + "9" * 64},
        details={"model_name": env.model, "version": V1},
    )  # fmt: skip
    a = registry_status(env.ledger())[0][0].versions[0].approvals
    assert a.requested and a.expired and "request again" in a.ignored[0]


def test_status_empty_workspace(env, cli):
    assert registry_status(env.ledger()) == ([], [])
    result = cli("--workspace", env.root, "status")
    assert result.code == 0 and "no registered models" in result.out
    result = cli("--workspace", env.root, "status", "--json")
    assert result.code == 0 and json.loads(result.out)["models"] == []


def test_cli_status_table_and_json(released_env, cli):
    env = released_env
    promote_in_turn(env.ws, env.model, [V1, V2])
    _approvals(env, V2)
    table = cli("--workspace", env.root, "status")
    assert table.code == 0, table.err
    assert f"{env.model}: prod {V2}" in table.out
    for text in ("prod", "requested by alice", "approved: bob", "rejected: carol", "pipeline"):
        assert text in table.out
    data = json.loads(cli("--workspace", env.root, "status", "--json").out)
    (model,) = data["models"]
    assert model["prod"] == V2
    assert [v["version"] for v in model["versions"]] == [V1, V2]
    assert model["versions"][1]["approvals"]["approved_by"] == ["bob"]
    assert json.loads(cli("--workspace", env.root, "--json", "status").out) == data


def test_cli_rollback(released_env, cli):
    env = released_env
    promote_in_turn(env.ws, env.model, [V1, V2])
    base = ("--workspace", env.root, "rollback")
    assert cli(*base, "--to", "nonsense", "--reason", "r", "--key", env.operator_key).code == 2
    assert cli(*base, "--reason", "r").code == 2  # no key
    assert cli(*base, "--key", env.operator_key).code == 2  # no reason
    unknown = cli(*base, "--to", f"{env.model}@v9", "--reason", "r", "--key", env.operator_key)
    assert unknown.code == 1 and "registry:" in unknown.err
    assert len(unknown.err.strip().splitlines()) == 1
    result = cli(*base, "--reason", "incident", "--key", env.operator_key)
    assert result.code == 0, result.err
    assert f"prod {V2} -> {V1}" in result.out and "marked bad" in result.out
    again = cli(*base, "--reason", "again", "--key", env.operator_key, "--json")
    assert again.code == 1 and "rollback:" in again.err
    state = tags.read_registry(env.ledger(), env.model)
    assert state.prod == V1 and state.bad == {V2}


@pytest.mark.parametrize("victim", ["model/model.safetensors"])
def test_cli_rollback_to_tampered_version_exits_1(released_env, cli, victim):
    env = released_env
    promote_in_turn(env.ws, env.model, [V1, V2])
    path = env.release_dir(1) / victim
    path.write_bytes(path.read_bytes() + b"\0")
    before = len(env.ws.audit().entries())
    result = cli("--workspace", env.root, "rollback", "--reason", "r", "--key", env.operator_key)
    assert result.code == 1 and "integrity:" in result.err
    assert tags.read_registry(env.ledger(), env.model).prod == V2
    assert len(env.ws.audit().entries()) == before
