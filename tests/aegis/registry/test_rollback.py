"""Verified rollback: default target, explicit target, refusals, tampering, DVC fetch, audit."""

from __future__ import annotations

import shutil

import pytest
from registry_helpers import assert_registry_consistent, promote_in_turn
from release_helpers import train_evaluate_release

from aegis import vcs
from aegis.config import override_params
from aegis.errors import RefusedError, UsageError
from aegis.ledger import Ledger
from aegis.registry import tags
from aegis.registry.rollback import rollback
from aegis.registry.targets import Target, parse_target

V1, V2, V3 = "v1.0.0", "v2.0.0", "v3.0.0"


def _registry_snapshot(env):
    refs = vcs.git(env.root, "for-each-ref", "--format=%(refname) %(objectname)", "refs/tags/")
    return refs, [e.hash for e in env.ws.audit().entries()]


def _created(ws, version):
    return next(
        e
        for e in ws.audit().entries()
        if e.action == "release.created" and e.details["version"] == version
    )


@pytest.fixture
def prod_v2(released_env):
    """v1 then v2 promoted: prod v2, v1 in the prod history."""
    promote_in_turn(released_env.ws, released_env.model, [V1, V2])
    return released_env


def test_default_rollback_goes_to_previous_prod_and_marks_bad(prod_v2):
    env = prod_v2
    ws = env.ws
    operator, _ = env.ledger().actor(env.operator_key)
    outcome = rollback(
        Ledger.load(ws), to=None, reason="incident 42", operator_key_path=env.operator_key
    )
    assert (outcome.model, outcome.from_version, outcome.to_version) == (env.model, V2, V1)
    v1, v2 = _created(ws, V1), _created(ws, V2)
    assert outcome.to_model_digest == v1.subjects["model"]
    assert outcome.to_evidence_digest == v1.subjects["evidence"]
    assert outcome.from_model_digest == v2.subjects["model"]
    assert outcome.from_evidence_digest == v2.subjects["evidence"]
    assert outcome.actor == operator and outcome.reason == "incident 42"
    assert outcome.seconds > 0

    state = assert_registry_consistent(ws, env.model)
    assert state.prod == V1 and state.bad == {V2}
    assert state.get(V2).stages == {"bad"}

    intent, done = ws.audit().entries()[-2:]
    assert (intent.action, done.action) == ("rollback.intent", "rollback.done")
    assert done.seq == outcome.audit_seq
    for entry in (intent, done):
        assert entry.actor == operator
        assert entry.subjects == {
            "model": v1.subjects["model"],
            "evidence": v1.subjects["evidence"],
            "from_model": v2.subjects["model"],
            "from_evidence": v2.subjects["evidence"],
        }
    assert intent.details["reason"] == "incident 42"
    assert (intent.details["from_version"], intent.details["to_version"]) == (V2, V1)
    assert intent.details["tags"] == outcome.tags
    assert len(outcome.tags) == 3


def test_explicit_target(prod_v2):
    env = prod_v2
    outcome = rollback(
        env.ledger(),
        to=parse_target(f"{env.model}@v1"),
        reason="r",
        operator_key_path=env.operator_key,
    )
    assert outcome.to_version == V1


def _refused(env, to, check, match, **kwargs):
    before = _registry_snapshot(env)
    with pytest.raises(RefusedError, match=match) as info:
        rollback(
            env.ledger(),
            to=parse_target(to) if to else None,
            reason="r",
            operator_key_path=kwargs.get("key", env.operator_key),
        )
    assert info.value.check == check
    assert _registry_snapshot(env) == before  # nothing moved, nothing audited
    return info.value


def test_refusals_leave_registry_and_audit_unchanged(released_env):
    env = released_env
    _refused(env, None, "rollback", "no version holds prod")
    promote_in_turn(env.ws, env.model, [V1])
    _refused(env, None, "rollback", "no earlier prod version")
    _refused(env, f"{env.model}@v1", "rollback", "already holds prod")
    _refused(env, f"{env.model}#prod", "rollback", "already holds prod")
    _refused(env, f"{env.model}@v2", "rollback", "never held prod")
    _refused(env, f"{env.model}@v9", "registry", "no such registered version")
    _refused(env, "other-model@v1", "registry", "no such registered model")
    _refused(env, None, "signer", None, key=env.approver_key)  # not an operator key


def test_usage_errors(prod_v2):
    env = prod_v2
    with pytest.raises(UsageError, match="--reason"):
        rollback(env.ledger(), to=None, reason="  ", operator_key_path=env.operator_key)
    with pytest.raises(UsageError, match="--key"):
        rollback(env.ledger(), to=None, reason="r", operator_key_path=None)
    with pytest.raises(UsageError, match="another model"):
        rollback(
            env.ledger(),
            to=Target("x", version=V1),
            model=env.model,
            reason="r",
            operator_key_path=env.operator_key,
        )


def test_refuses_a_version_marked_bad(prod_v2):
    env = prod_v2
    rollback(env.ledger(), to=None, reason="first", operator_key_path=env.operator_key)
    promote_in_turn(env.ws, env.model, [V2])  # re-promoted by hand: v2 holds prod and bad
    state = tags.read_registry(env.ledger(), env.model)
    assert state.prod == V2 and V2 in state.bad
    outcome = rollback(env.ledger(), to=None, reason="again", operator_key_path=env.operator_key)
    assert outcome.to_version == V1
    _refused(env, f"{env.model}@v2", "rollback", "marked bad")


@pytest.mark.parametrize(
    ("victim", "check"),
    [
        ("model/model.safetensors", "integrity"),
        ("model/config.json", "integrity"),
        ("metrics.json", "integrity"),
        ("release.json", "integrity"),
        ("release.sig", "signature"),
    ],
)
def test_tampered_target_refused_prod_unchanged(prod_v2, victim, check):
    env = prod_v2
    path = env.release_dir(1) / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    _refused(env, None, check, None)
    state = tags.read_registry(env.ledger(), env.model)
    assert state.prod == V2 and state.bad == set()


def test_swapped_target_directory_refused(prod_v2):
    env = prod_v2
    d1, d2 = env.release_dir(1), env.release_dir(2)
    shutil.rmtree(d1)
    shutil.copytree(d2, d1)
    _refused(env, None, "identity", None)


def test_missing_directory_fetched_from_dvc_cache(prod_v2):
    env = prod_v2
    shutil.rmtree(env.release_dir(1))
    outcome = rollback(env.ledger(), to=None, reason="r", operator_key_path=env.operator_key)
    assert outcome.to_version == V1
    assert (env.release_dir(1) / "release.json").is_file()
    assert_registry_consistent(env.ws, env.model)


@pytest.mark.slow
def test_missing_directory_and_cache_pulled_from_remote(prod_v2):
    env = prod_v2
    vcs.dvc(env.root, "push", "-q", f"releases/{env.model}/v1.dvc")
    shutil.rmtree(env.release_dir(1))
    shutil.rmtree(env.root / ".dvc" / "cache")
    outcome = rollback(env.ledger(), to=None, reason="r", operator_key_path=env.operator_key)
    assert outcome.to_version == V1
    assert (env.release_dir(1) / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_rollback_twice_never_returns_to_a_bad_version(released_env):
    env = released_env
    ws = env.ws
    override_params(ws.params_path, {"train": {"seed": 2}})
    vcs.commit_paths(ws.root, "test: train.seed 2", ["params.yaml"])
    assert train_evaluate_release(ws).version == V3
    promote_in_turn(ws, env.model, [V1, V2, V3])

    first = rollback(Ledger.load(ws), to=None, reason="v3 bad", operator_key_path=env.operator_key)
    assert (first.from_version, first.to_version) == (V3, V2)
    second = rollback(
        Ledger.load(ws), to=None, reason="v2 bad too", operator_key_path=env.operator_key
    )
    assert (second.from_version, second.to_version) == (V2, V1)
    state = assert_registry_consistent(ws, env.model)
    assert state.prod == V1 and state.bad == {V2, V3}
    with pytest.raises(RefusedError, match="no earlier prod version") as info:
        rollback(Ledger.load(ws), to=None, reason="again", operator_key_path=env.operator_key)
    assert info.value.check == "rollback"
    for version in ("v3", "v2"):
        with pytest.raises(RefusedError, match="marked bad"):
            rollback(
                Ledger.load(ws),
                to=parse_target(f"{env.model}@{version}"),
                reason="back",
                operator_key_path=env.operator_key,
            )
    assert tags.read_registry(Ledger.load(ws), env.model).prod == V1
