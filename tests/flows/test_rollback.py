"""The ``rollback`` flow: in-process under Prefect's test harness, and ``aegis rollback --flow``.

Each test gets a copy of the session's two-release workspace (``released_env``).
"""

from __future__ import annotations

import pytest
from helpers import SERVER_STARTUP_S
from prefect.testing.utilities import prefect_test_harness
from registry_helpers import aegis, assert_registry_consistent, promote_in_turn

from aegis.errors import RefusedError
from aegis.registry import tags
from flows.rollback import rollback

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
    outcome = rollback(
        workspace=str(env.root), reason="flow incident", operator_key=str(env.operator_key)
    )
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
    state = rollback(
        workspace=str(env.root),
        reason="r",
        operator_key=str(env.operator_key),
        to=f"{env.model}@v1",
        return_state=True,
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
