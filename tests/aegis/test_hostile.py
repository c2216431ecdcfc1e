"""A hostile workspace: what someone with write access (and their own key only) tries.

Each case is one the hostile review of the 0.1 code got through. Every refusal is one
clear line with exit code 1 (a security check, named) or 2 (usage or configuration),
and nothing stored changes.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from helpers import Env, pipeline_key, snapshot

from aegis.crypto.keys import generate_key
from aegis.data.publish import publish_dataset


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    return lines[0]


def _refused(result, code: int, prefix: str) -> str:
    line = _one_line(result.err)
    assert result.code == code, (result.code, result.err)
    assert line.startswith(prefix), line
    return line


# -- the admin key does not live in the workspace ----------------------------------------------


def test_an_admin_key_left_in_the_workspace_blocks_trust_changes_until_moved(cli, env: Env):
    legacy = env.ws.legacy_admin_key_path
    shutil.copy2(env.admin_key, legacy)  # where aegis 0.1 kept it
    before = snapshot(env.root)
    w = ("--workspace", env.root)
    line = _refused(
        cli(*w, "keys", "new", "--role", "approver", "--name", "mallory", "--owner", "alice",
            "--out", env.root.parent / "mallory.pem", "--admin-key", env.admin_key),
        1, "refused: admin-key:",
    )  # fmt: skip
    assert "mv " in line and "--admin-key" in line
    _refused(cli(*w, "trust", "revoke", "ops", "--admin-key", env.admin_key), 1, "refused:")
    assert snapshot(env.root) == before
    legacy.unlink()
    assert cli(*w, "trust", "retire", "ops", "--admin-key", env.admin_key).code == 0


def test_an_admin_key_inside_the_workspace_is_refused_wherever_it_is(cli, env: Env):
    inside = env.root / "notes" / "admin.pem"
    inside.parent.mkdir()
    shutil.copy2(env.admin_key, inside)
    result = cli("--workspace", env.root, "trust", "retire", "ops", "--admin-key", inside)
    assert "inside the workspace" in _refused(result, 1, "refused: admin-key:")


def test_trust_changes_need_an_admin_key(cli, env: Env, monkeypatch):
    monkeypatch.delenv("AEGIS_ADMIN_KEY", raising=False)
    result = cli("--workspace", env.root, "trust", "retire", "ops")
    assert "--admin-key" in _refused(result, 2, "error:")
    monkeypatch.setenv("AEGIS_ADMIN_KEY", str(env.admin_key))
    assert cli("--workspace", env.root, "trust", "retire", "ops").code == 0


# -- nothing writes into releases or stage outputs but their stage ---------------------------


def test_no_out_option_writes_into_releases_or_stage_outputs(cli, released_env):
    env = released_env
    before = snapshot(env.root)
    w = ("--workspace", env.root)
    v1 = env.release_dir(1)
    cases = [
        ("evaluate", env.v1, "--out", v1),
        ("evaluate", env.v1, "--out", env.root / "reports" / "digits"),
        ("data", "import-sklearn", "digits", "--out", v1),
        ("data", "import-sklearn", "digits", "--out", env.root / "models" / "digits"),
        ("data", "publish", env.raw, "--name", "digits", "--key", env.supplier_key, "--out",
         env.root / "data" / "new"),
        ("export", env.v1, v1 / "copy"),
        ("export", env.v1, env.root / ".aegis" / "out"),
    ]  # fmt: skip
    for args in cases:
        _refused(cli(*w, *args), 1, "refused: path:")
    result = cli(*w, "keys", "new", "--role", "operator", "--name", "x", "--owner", "x",
                 "--out", v1 / "x.pem", "--admin-key", env.admin_key)  # fmt: skip
    _refused(result, 1, "refused: key-location:")
    result = cli(*w, "keys", "new", "--role", "operator", "--name", "x", "--owner", "x",
                 "--out", env.root / "x.pem", "--admin-key", env.admin_key)  # fmt: skip
    _refused(result, 1, "refused: key-location:")
    assert snapshot(env.root) == before
    assert cli(*w, "verify", env.v1).code == 0


# -- planted files never hang or exhaust a command ----------------------------------------------


@pytest.mark.parametrize("plant", ["fifo", "dev-zero"])
def test_planted_special_files_are_refused_not_read(cli, env: Env, plant):
    def planted(path):
        path.unlink()
        if plant == "fifo":
            os.mkfifo(path)
        else:
            path.symlink_to("/dev/zero")

    w = ("--workspace", env.root)
    planted(env.root / "params.yaml")
    _refused(cli(*w, "ingest", env.dataset, "--name", "digits"), 2, "error: ")
    planted(env.ws.trust_path)
    _refused(cli(*w, "status"), 1, "refused: trust-store:")


def test_a_planted_audit_head_or_log_is_refused_not_read(cli, env: Env):
    env.ws.audit().head_path.unlink()
    env.ws.audit().head_path.symlink_to("/dev/zero")
    _refused(cli("--workspace", env.root, "audit", "verify"), 1, "refused: audit:")
    env.ws.audit().head_path.unlink()
    os.mkfifo(env.ws.audit().log_path.with_name("fifo"))
    env.ws.audit().log_path.unlink()
    os.rename(env.ws.audit().log_path.with_name("fifo"), env.ws.audit().log_path)
    _refused(cli("--workspace", env.root, "status"), 1, "refused: audit:")


# -- hostile params.yaml: refused at once, with the line ------------------------------------------

ALIAS_BOMB = "\n".join(
    ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    + [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
       f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]"
       for i in range(9)]
) + "\n"  # fmt: skip


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (ALIAS_BOMB, "aliases are not allowed (line 2)"),
        ("train:\n  seed: 1\n  seed: 2\n", "duplicate key 'seed' (line 3)"),
        ("train: !!python/object/apply:os.system ['true']\n", "unsupported tag"),
        ("[" * 10_000 + "]" * 10_000 + "\n", "nested too deeply"),
        ("train:\n  seed: " + "9" * 5000 + "\n", "a value over 4096 characters (line 2)"),
        ("x: " + "y" * 10_000 + "\n", "a value over 4096 characters (line 1)"),
    ],
    ids=["alias-bomb", "duplicate-key", "python-tag", "deep-nesting", "huge-int", "huge-str"],
)
def test_hostile_params_are_a_configuration_error_at_once(cli, env: Env, text, fragment):
    (env.root / "params.yaml").write_text(text)
    before = snapshot(env.root)
    line = _refused(
        cli("--workspace", env.root, "validate", "digits"), 2, "error: params.yaml: not valid YAML"
    )
    assert fragment in line
    line = _refused(cli("--workspace", env.root, "ingest", env.dataset, "--name", "digits"), 2,
                    "error:")  # fmt: skip
    assert snapshot(env.root) == before


def test_params_as_dvc_rewrites_them_read_the_same(env: Env):
    """YAML 1.2, as DVC (ruamel) writes after `dvc exp run -S`: off is a string, 1e-05 a float."""
    import re

    from aegis.config import load_params

    path = env.root / "params.yaml"
    text = re.sub(r"privacy: ['\"]off['\"]", "privacy: off", path.read_text())
    text = re.sub(r"delta: 1\.0e-0?5", "delta: 1e-05", text)
    assert "privacy: off" in text and "delta: 1e-05" in text
    path.write_text(text)
    params = load_params(path)
    assert params.train.privacy == "off" and params.train.dp.delta == 1e-05


# -- names and text ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("validate", "d" * 300),
        ("quarantine", "show", "d" * 300),
        ("ingest", "/tmp/" + "d" * 300, "--name", "digits"),
        ("verify", "./" + "d" * 300),
        ("verify", "m" * 300 + "@v1"),
    ],
    ids=["validate", "quarantine", "ingest-source", "verify-path", "verify-target"],
)
def test_a_300_character_name_is_a_clean_error(cli, env: Env, args):
    result = cli("--workspace", env.root, *args)
    assert result.code in (1, 2)
    _one_line(result.err)


@pytest.mark.parametrize(
    "name, owner, fragment",
    [
        ("\u0430dmin", "x", "key name"),  # a Cyrillic a: looks like 'admin'
        ("ops\u202e", "x", "key name"),
        ("k" * 65, "x", "key name"),
        ("bob2", "bob\x1b[2J", "owner"),
        ("bob2", "bob\u2028carol", "owner"),
        ("bob2", "b" * 129, "owner"),
        ("bob2", "b\u3164ob", "owner"),  # an invisible letter: looks like 'bob'
    ],
    ids=["homoglyph", "bidi", "long", "escape", "separator", "long-owner", "invisible"],
)
def test_key_names_are_ascii_and_owners_one_printable_line(cli, env: Env, name, owner, fragment):
    before = snapshot(env.root)
    out = env.root.parent / "new.pem"
    result = cli("--workspace", env.root, "keys", "new", "--role", "approver", "--name", name,
                 "--owner", owner, "--out", out, "--admin-key", env.admin_key)  # fmt: skip
    assert _refused(result, 2, "error:").count(fragment)
    assert snapshot(env.root) == before and not out.exists()


def test_a_dataset_name_ending_in_dvc_is_refused(cli, env: Env, tmp_path):
    out = tmp_path / "x"
    result = cli("data", "publish", env.raw, "--name", "digits.dvc", "--key", env.supplier_key,
                 "--out", out)  # fmt: skip
    assert "must not end in '.dvc'" in _refused(result, 2, "error:")
    result = cli("--workspace", env.root, "ingest", env.dataset, "--name", "digits.DVC")
    assert "must not end in '.dvc'" in _refused(result, 2, "error:")


@pytest.mark.parametrize(
    "reason", ["\x1b[2J\x1b[Hall clear", "ok\nrefused: fake line", "[red]ok[/red]\u202e"]
)
def test_reasons_with_terminal_escapes_are_refused(cli, released_env, reason):
    env = released_env
    w = ("--workspace", env.root)
    before = snapshot(env.root)
    for args in (
        ("rollback", "--reason", reason, "--key", env.operator_key),
        ("trust", "revoke", "ops", "--reason", reason, "--admin-key", env.admin_key),
        ("approve", env.v1, "--reject", "--reason", reason, "--key", env.approver_key),
        ("quarantine", "release", "digits", "--reason", reason, "--key", env.operator_key),
    ):
        result = cli(*w, *args)
        assert "control characters" in _refused(result, 2, "error:"), args
    assert snapshot(env.root) == before


def test_text_from_the_log_is_shown_escaped(cli, env: Env):
    env.ws.audit().append(
        actor="\x1b[31mroot", action="test.note", pipeline_key=pipeline_key(env.ws),
        details={"reason": "\x1b[2Jwiped [bold]x[/bold]", "name": "n"},
    )  # fmt: skip
    result = cli("--workspace", env.root, "audit", "show", "--last", "1")
    assert result.code == 0
    assert "\x1b" not in result.out  # no escape reaches the terminal
    assert "\\x1b" in result.out and "[bold]" in result.out  # shown, markup not rendered


def test_a_key_others_can_read_is_refused_by_commands(cli, env: Env):
    env.operator_key.chmod(0o644)
    result = cli("--workspace", env.root, "ingest", env.dataset, "--name", "digits",
                 "--key", env.operator_key)  # fmt: skip
    assert "chmod 600" in _refused(result, 1, "refused: key-permissions:")


def test_a_stranger_key_cannot_act(cli, env: Env, tmp_path):
    stranger = generate_key(tmp_path / "stranger.pem")
    result = cli("--workspace", env.root, "ingest", env.dataset, "--name", "digits",
                 "--key", stranger.path)  # fmt: skip
    _refused(result, 1, "refused: signer:")


# -- planted directory symlinks: writers never follow them -------------------------------------


def _plant_dir_symlink(root, rel: str, outside):
    """``root/rel`` replaced by a symlink to ``outside`` (holding what was there, if anything)."""
    path = root / rel
    if path.exists():
        shutil.move(str(path), outside)
    else:
        outside.mkdir()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(outside, target_is_directory=True)
    return _contents(outside)


def _contents(directory):
    return snapshot(directory), sorted(directory.rglob("*"))


@pytest.mark.parametrize(
    "rel, command",
    [
        ("validation/digits", "validate"),
        ("quarantine", "validate"),
        (".aegis/profiles", "validate"),
        (".aegis/scratch", "train"),
        ("models/digits", "train"),
        ("data", "ingest"),
        (".aegis/staging", "ingest"),
    ],
)
def test_a_planted_directory_symlink_is_refused_not_written_through(
    cli, released_env, tmp_path, rel, command
):
    env = released_env
    newer = tmp_path / "newer"
    if command == "ingest":
        publish_dataset(env.raw, name="digits", key_path=env.supplier_key, out=newer)
    args = {
        "validate": ("validate", "digits"),
        "train": ("stage", "train", "--name", "digits"),
        "ingest": ("ingest", newer, "--name", "digits"),
    }[command]
    outside = tmp_path / "outside"
    held = _plant_dir_symlink(env.root, rel, outside)
    line = _refused(cli("--workspace", env.root, *args), 1, "refused: file:")
    assert "is a symlink where Aegis writes a directory" in line
    assert _contents(outside) == held  # nothing written where the symlink points
    assert (env.root / rel).is_symlink()


# -- validation runs only under a committed suite and a dvc.yaml DVC can read ------------------


def test_an_uncommitted_suite_or_a_broken_dvc_yaml_is_refused_before_anything_is_written(
    cli, env: Env
):
    w = ("--workspace", env.root)
    assert cli(*w, "ingest", env.dataset, "--name", "digits").code == 0
    suite = env.root / "expectations" / "digits.json"
    committed = suite.read_text()
    loosened = json.loads(committed)
    loosened["expectations"] = loosened["expectations"][:1]  # what an attacker would like
    suite.write_text(json.dumps(loosened))
    before = snapshot(env.root)
    line = _refused(cli(*w, "validate", "digits"), 1, "refused: suite:")
    assert "expectations/digits.json differs from the committed version" in line
    assert snapshot(env.root) == before
    suite.write_text(committed)
    for text in ("stages: [\n", "- a list\n"):
        (env.root / "dvc.yaml").write_text(text)
        before = snapshot(env.root)
        line = _refused(cli(*w, "validate", "digits"), 2, "error: dvc.yaml")
        assert snapshot(env.root) == before, line  # no audit entry, no outputs


def test_a_workspace_json_bomb_or_a_huge_log_is_refused_without_reading_it(cli, env: Env):
    w = ("--workspace", env.root)
    meta = env.ws.meta_path.read_bytes()
    env.ws.meta_path.write_text("[" * 100_000 + "]" * 100_000)
    assert "missing or corrupt" in _refused(cli(*w, "status"), 2, "error:")
    env.ws.meta_path.write_bytes(meta)
    from aegis.audit import LOG_LIMIT

    with env.ws.audit().log_path.open("r+b") as fh:  # sparse: no disk used
        fh.truncate(LOG_LIMIT + 1)
    line = _refused(cli(*w, "audit", "verify"), 1, "refused:")
    assert "limit" in line


def test_a_planted_approvals_symlink_is_refused_before_the_request_is_recorded(
    released_env, tmp_path
):
    # The core function: `aegis promote` runs it inside the promote flow (a Prefect server).
    from registry_helpers import set_promote

    from aegis.errors import UnsafeFileError
    from aegis.registry.promotion import promote
    from aegis.registry.targets import parse_target

    env = released_env
    set_promote(env)
    outside = tmp_path / "outside"
    held = _plant_dir_symlink(env.root, ".aegis/approvals/digits-model", outside)
    seen = len(env.ledger().log)
    with pytest.raises(UnsafeFileError, match="is a symlink where Aegis writes a directory"):
        promote(env.ledger(), parse_target(env.v1), operator_key_path=env.operator_key)
    assert _contents(outside) == held
    assert len(env.ledger().log) == seen  # refused before the request was audited


def test_an_out_path_through_a_planted_symlink_in_the_workspace_is_refused(
    cli, released_env, tmp_path
):
    env = released_env
    outside = tmp_path / "outside"
    held = _plant_dir_symlink(env.root, "reports", outside)
    out = env.root / "reports" / "again"  # resolves outside: must not be written there
    result = cli("--workspace", env.root, "evaluate", env.v1, "--out", out)
    assert "is a symlink where Aegis writes a directory" in _refused(result, 1, "refused: file:")
    assert _contents(outside) == held
