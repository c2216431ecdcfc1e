"""The GTO registry as git tags: register, assign/unassign, read back in counter order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aegis import vcs
from aegis.errors import RefusedError
from aegis.registry import tags
from aegis.registry.targets import Target

MODEL = "m"


def _commit(root: Path, n: int) -> str:
    (root / f"file{n}.txt").write_text(str(n))
    return vcs.commit_paths(root, f"commit {n}", [f"file{n}.txt"])


@pytest.fixture
def registry(env):
    """A workspace with m@v1.0.0, m@v2.0.0, m@v3.0.0 on three commits."""
    ws = env.ws
    commits = {}
    for n in (1, 2, 3):
        commits[n] = _commit(ws.root, n)
        tags.register_version(ws, model=MODEL, version=f"v{n}.0.0", ref=commits[n], message=f"v{n}")
    return ws, commits


def _assign(ws, version, stage=tags.PROD):
    return tags.assign_stage(ws, model=MODEL, version=version, stage=stage, message="t")


def _unassign(ws, version, stage=tags.PROD):
    return tags.unassign_stage(ws, model=MODEL, version=version, stage=stage, message="t")


def test_register_and_read(registry):
    ws, commits = registry
    state = tags.read_tags(ws, MODEL)
    assert [v.version for v in state.versions] == ["v1.0.0", "v2.0.0", "v3.0.0"]
    assert [v.number for v in state.versions] == [1, 2, 3]
    assert [v.commit for v in state.versions] == [commits[1], commits[2], commits[3]]
    assert [v.tag for v in state.versions] == ["m@v1.0.0", "m@v2.0.0", "m@v3.0.0"]
    assert state.prod is None and state.bad == set() and state.prod_history == []
    assert tags.models(ws) == [MODEL]
    assert tags.read_tags(ws, "other").versions == []


def test_assign_unassign_by_counter_within_one_second(registry):
    ws, _ = registry
    planned = tags.plan_stage_tags(
        ws, model=MODEL, ops=[("prod", False), ("prod", False), ("prod", True), ("bad", False)]
    )
    made = [
        _assign(ws, "v1.0.0"),
        _assign(ws, "v2.0.0"),
        _unassign(ws, "v1.0.0"),
        _assign(ws, "v1.0.0", tags.BAD),
    ]
    assert made == planned == ["m#prod#1", "m#prod#2", "m#prod!#3", "m#bad#4"]
    assert all(tags.tag_exists(ws, t) for t in made)
    state = tags.read_tags(ws, MODEL)
    assert state.prod == "v2.0.0"
    assert state.bad == {"v1.0.0"}
    assert state.prod_history == ["v1.0.0", "v2.0.0"]
    assert state.get("v1.0.0").stages == {"bad"}
    assert state.get("v2.0.0").stages == {"prod"}
    assert state.get("v9.0.0") is None


def test_rollback_sequence_history_and_reassign(registry):
    ws, _ = registry
    for v in ("v1.0.0", "v2.0.0", "v3.0.0"):
        state = tags.read_tags(ws, MODEL)
        _assign(ws, v)
        if state.prod:
            _unassign(ws, state.prod)
    # roll back v3 -> v2 (assign prod to an earlier holder needs force; tags.assign_stage does it)
    _assign(ws, "v2.0.0")
    _unassign(ws, "v3.0.0")
    _assign(ws, "v3.0.0", tags.BAD)
    state = tags.read_tags(ws, MODEL)
    assert state.prod == "v2.0.0"
    assert state.bad == {"v3.0.0"}
    assert state.prod_history == ["v1.0.0", "v2.0.0", "v3.0.0", "v2.0.0"]
    assert [v.version for v in state.versions if "prod" in v.stages] == ["v2.0.0"]


def test_two_holders_mid_change_latest_assigned_wins(registry):
    ws, _ = registry
    _assign(ws, "v2.0.0")
    _assign(ws, "v1.0.0")  # not yet unassigned from v2 (a change in progress)
    state = tags.read_tags(ws, MODEL)
    assert state.prod == "v1.0.0"
    assert state.resolve(Target(MODEL, stage="prod")).version in ("v1.0.0", "v2.0.0")


def test_resolve(registry):
    ws, _ = registry
    _assign(ws, "v2.0.0")
    state = tags.read_tags(ws, MODEL)
    assert state.resolve(Target(MODEL, version="v3.0.0")).version == "v3.0.0"
    assert state.resolve(Target(MODEL, stage="prod")).version == "v2.0.0"
    with pytest.raises(RefusedError) as info:
        state.resolve(Target(MODEL, version="v7.0.0"))
    assert info.value.check == "registry"
    with pytest.raises(RefusedError) as info:
        state.resolve(Target(MODEL, stage="staging"))
    assert info.value.check == "registry"


def test_plan_counts_per_model(registry):
    ws, commits = registry
    tags.register_version(ws, model="other", version="v1.0.0", ref=commits[1], message="o")
    tags.assign_stage(ws, model="other", version="v1.0.0", stage="prod", message="o")
    tags.assign_stage(ws, model="other", version="v1.0.0", stage="bad", message="o")
    assert tags.plan_stage_tags(ws, model=MODEL, ops=[("prod", False)]) == ["m#prod#1"]
    assert tags.next_stage_tag(ws, model="other", stage="prod", unassign=True) == "other#prod!#3"
    assert tags.models(ws) == [MODEL, "other"]
    assert tags.read_tags(ws, MODEL).prod is None
    assert tags.read_tags(ws, "other").prod == "v1.0.0"


def test_delete_tag(registry):
    ws, _ = registry
    tag = _assign(ws, "v1.0.0")
    tags.delete_tag(ws, tag)
    assert not tags.tag_exists(ws, tag)
    assert tags.read_tags(ws, MODEL).prod is None


def test_gto_show_reads_the_same_registry(registry):
    ws, _ = registry
    _assign(ws, "v1.0.0")
    _assign(ws, "v2.0.0")
    _unassign(ws, "v1.0.0")
    out = subprocess.run(
        [str(Path(sys.executable).parent / "gto"), "show", MODEL, "--json"],
        cwd=ws.root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    shown = json.loads(out)
    text = json.dumps(shown)
    assert "v2.0.0" in text and "v3.0.0" in text


# -- the tags must be exactly what the signed audit log records -------------------------


def _prod_v1(env):
    from registry_helpers import promote_in_turn

    promote_in_turn(env.ws, env.model, ["v1.0.0"])
    return tags.read_registry(env.ledger(), env.model)


def test_journaled_changes_read_back_with_their_audited_commits(released_env):
    state = _prod_v1(released_env)
    assert state.prod == "v1.0.0"
    expected, in_flight = released_env.ledger().audited_tags(released_env.model)
    assert in_flight == set()
    assert set(expected) == {"digits-model@v1.0.0", "digits-model@v2.0.0", "digits-model#prod#1"}
    assert expected["digits-model#prod#1"] == state.get("v1.0.0").commit


def test_a_hand_made_prod_tag_is_refused(released_env, cli):
    env = released_env
    _prod_v1(env)
    from gto import api

    api.assign(str(env.root), env.model, "prod", version="v2.0.0", force=True, message="forged")
    with pytest.raises(RefusedError, match="not made by an audited") as exc:
        tags.read_registry(env.ledger(), env.model)
    assert exc.value.check == "registry"
    result = cli("--workspace", env.root, "verify", f"{env.model}#prod")
    assert result.code == 1 and "registry" in result.err
    assert cli("--workspace", env.root, "status").code == 1


def test_a_deleted_audited_tag_is_refused(released_env):
    env = released_env
    _prod_v1(env)
    vcs.git(env.root, "tag", "-d", "digits-model#prod#1")
    with pytest.raises(RefusedError, match="is missing"):
        tags.read_registry(env.ledger(), env.model)


def test_a_moved_tag_is_refused(released_env):
    env = released_env
    state = _prod_v1(env)
    v2_commit = state.get("v2.0.0").commit
    vcs.git(env.root, "tag", "-f", "-a", "-m", "moved", "digits-model#prod#1", v2_commit)
    with pytest.raises(RefusedError, match="moved"):
        tags.read_registry(env.ledger(), env.model)


def test_a_forged_done_entry_breaks_the_audit_log(released_env):
    env = released_env
    _prod_v1(env)
    log = env.ws.audit().log_path
    lines = log.read_text().splitlines()
    assert "#prod#1" in lines[-1]
    lines[-1] = lines[-1].replace("#prod#1", "#prod#9")
    log.write_text("\n".join(lines) + "\n")
    with pytest.raises(RefusedError) as exc:
        tags.read_registry(env.ledger(), env.model)
    assert exc.value.check == "audit"
