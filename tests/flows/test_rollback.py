"""The ``rollback`` flow: in-process under Prefect's test harness, and ``aegis rollback --flow``.

Each test gets a copy of the session's two-release workspace (``released_env``).
"""

from __future__ import annotations

import json

import pytest
from helpers import SERVER_STARTUP_S
from prefect.testing.utilities import prefect_test_harness
from registry_helpers import aegis, assert_registry_consistent, promote_in_turn

from aegis.errors import RefusedError
from aegis.registry import tags
from flows.rollback import operator_session, rollback

V1, V2 = "v1.0.0", "v2.0.0"


@pytest.fixture(scope="module", autouse=True)
def _prefect_harness():
    with prefect_test_harness(server_startup_timeout=SERVER_STARTUP_S):
        yield


@pytest.fixture
def prod_v2(released_env):
    """The session's two releases with v1 then v2 promoted in turn (v2 holds prod)."""
    promote_in_turn(released_env.ws, released_env.model, [V1, V2])
    return released_env


@pytest.mark.slow
def test_flow_rolls_back_to_verified_previous_prod(prod_v2):
    env = prod_v2
    with operator_session(env.operator_key):
        outcome = rollback(workspace=str(env.root), reason="flow incident")
    assert (outcome.from_version, outcome.to_version) == (V2, V1)
    state = assert_registry_consistent(env.ws, env.model)
    assert state.prod == V1 and state.bad == {V2}
    done = env.ws.audit().entries()[-1]
    assert done.action == "rollback.done" and done.seq == outcome.audit_seq


@pytest.mark.slow
def test_flow_refuses_tampered_target_prod_unchanged(prod_v2):
    env = prod_v2
    path = env.release_dir(1) / "metrics.json"
    path.write_bytes(path.read_bytes().replace(b"0.", b"1.", 1))
    before = len(env.ws.audit().entries())
    with operator_session(env.operator_key):
        state = rollback(
            workspace=str(env.root), reason="r", to=f"{env.model}@v1", return_state=True
        )
    assert state.is_failed()
    with pytest.raises(RefusedError) as info:
        state.result()
    assert info.value.check == "integrity"
    assert tags.read_registry(env.ledger(), env.model).prod == V2
    assert len(env.ws.audit().entries()) == before


@pytest.mark.slow
@pytest.mark.integration
def test_cli_rollback_flow_against_a_prefect_server(prod_v2, prefect_server):
    env = prod_v2
    result = aegis(
        env.root,
        "rollback",
        "--flow",
        "--reason",
        "via server",
        "--key",
        env.operator_key,
        env={"PREFECT_API_URL": prefect_server},
    )
    assert result.returncode == 0, result.stderr
    assert f"prod {V2} -> {V1}" in result.stdout
    assert tags.read_registry(env.ledger(), env.model).prod == V1


# -- a deployment run holds no key: it runs only an operator-signed request -----------------


def _artifact(state, key: str):
    """The artifact ``key`` the flow run of ``state`` published, read back through the client."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    flow_run = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run]))
        )
    return {a.key: a for a in found}[key]


def _signed(env, **kw):
    from aegis.registry.rollback_request import sign_request

    args = {"reason": "bad model in prod", "to": None, "model": None} | kw
    return sign_request(env.ledger(), operator_key_path=env.operator_key, **args)


@pytest.mark.slow
def test_flow_without_key_runs_a_signed_request_once(prod_v2):
    env = prod_v2
    request = _signed(env)

    state = rollback(workspace=str(env.root), request=request, return_state=True)
    outcome = state.result()

    assert (outcome.from_version, outcome.to_version) == (V2, V1)
    assert "bad model in prod" in _artifact(state, "digits-model-rollback").data
    intent = next(e for e in env.ws.audit().entries() if e.action == "rollback.intent")
    assert intent.actor == env.ledger().actor(env.operator_key)[0]  # the operator who signed
    assert intent.details["reason"] == "bad model in prod"
    assert intent.details["request"].startswith("sha256:")
    # the same request again is a replay, whatever prod is now
    state = rollback(workspace=str(env.root), request=request, return_state=True)
    with pytest.raises(RefusedError) as info:
        state.result()
    assert info.value.check == "replay"


def test_flow_without_key_or_request_is_refused(prod_v2):
    env = prod_v2
    before = len(env.ws.audit().entries())
    state = rollback(workspace=str(env.root), reason="no key", return_state=True)
    with pytest.raises(Exception, match="holds no operator key"):
        state.result()
    assert len(env.ws.audit().entries()) == before


@pytest.mark.parametrize(
    ("edit", "check"),
    [
        (lambda d: d["body"].update(reason="changed after signing"), "signature"),
        (lambda d: d.update(key_id="0" * 64), "signature"),
        (lambda d: d.pop("signature"), "signature"),
        (lambda d: d["body"].update(kind="aegis-promotion-request/1"), "signature"),
    ],
    ids=["edited", "unknown-key", "unsigned", "other-kind"],
)
def test_forged_or_edited_request_changes_nothing(prod_v2, edit, check):
    env = prod_v2
    request = _signed(env)
    edit(request)
    before = len(env.ws.audit().entries())
    state = rollback(workspace=str(env.root), request=request, return_state=True)
    with pytest.raises(RefusedError) as info:
        state.result()
    assert info.value.check == check
    assert tags.read_registry(env.ledger(), env.model).prod == V2
    assert len(env.ws.audit().entries()) == before


def test_request_signed_by_a_non_operator_or_expired_is_refused(prod_v2, monkeypatch):
    from aegis.crypto.documents import sign_document
    from aegis.crypto.keys import load_private_key
    from aegis.registry import rollback_request

    env = prod_v2
    body = _signed(env)["body"]
    by_approver = sign_document(load_private_key(env.approver_key), body)
    with pytest.raises(RefusedError) as info:
        rollback_request.verify_request(env.ledger(), by_approver)
    assert info.value.check == "signer"
    expired = sign_document(
        load_private_key(env.operator_key),
        body | {"created": "2020-01-01T00:00:00.000000Z", "expires": "2020-01-01T00:15:00.000000Z"},
    )
    with pytest.raises(RefusedError) as info:
        rollback_request.verify_request(env.ledger(), expired)
    assert info.value.check == "request"
    other = sign_document(load_private_key(env.operator_key), body | {"workspace": "ab" * 32})
    with pytest.raises(RefusedError) as info:
        rollback_request.verify_request(env.ledger(), other)
    assert info.value.check == "request"


def test_cli_signs_a_rollback_request_into_a_private_file(prod_v2, cli, tmp_path):
    env = prod_v2
    out = tmp_path / "request.json"
    result = cli("--workspace", env.root, "rollback", "--reason", "incident 7", "--key",
                 env.operator_key, "--sign-request", out)  # fmt: skip
    assert result.code == 0, result.err
    assert "prefect deployment run rollback/aegis" in result.out
    assert out.stat().st_mode & 0o077 == 0
    document = json.loads(out.read_text())
    assert document["body"]["reason"] == "incident 7"
    assert tags.read_registry(env.ledger(), env.model).prod == V2  # signing moved nothing
    inside = cli("--workspace", env.root, "rollback", "--reason", "r", "--key",
                 env.operator_key, "--sign-request", env.root / "models" / "x.json")  # fmt: skip
    assert inside.code == 1 and "refused: path" in inside.err  # never into a stage output


@pytest.mark.slow
def test_the_monitor_flow_rolls_back_with_the_workers_key_and_refuses_without_one(
    served_template, tmp_path, monkeypatch
):
    from monitor_helpers import clean_rows, serve_rows
    from serve_helpers import copy_served

    from aegis.errors import UsageError
    from aegis.trust_ops import new_key
    from flows.monitor import KEY_ENV, monitor

    served = copy_served(served_template, tmp_path / "env")
    promote_in_turn(served.env.ws, served.env.model, [V2])  # v1 held prod before it
    key = served.root.parent / "keys" / "monitor.pem"  # beside the serving key
    new_key(served.env.ws, role="monitor", name="watchman", owner="sre", out=key,
            admin_key=served.env.admin_key)  # fmt: skip
    serve_rows(served, 16.0 - clean_rows(served)[:100], clients=("app", "ops"))
    monkeypatch.delenv(KEY_ENV, raising=False)
    state = monitor(workspace=str(served.root), return_state=True)
    assert state.is_failed()
    with pytest.raises(UsageError, match=KEY_ENV):
        state.result()
    monkeypatch.setenv(KEY_ENV, str(key))
    report = monitor(workspace=str(served.root))
    [incident] = report.incidents
    assert incident.action == "rollback" and report.contained[0]["to_version"] == V1
    state = assert_registry_consistent(served.env.ws, served.env.model)
    assert state.prod == V1 and state.suspect == {V2}
