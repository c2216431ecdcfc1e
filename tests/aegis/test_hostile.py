"""A hostile workspace: what someone with write access (and their own key only) tries.

Each case is one the hostile review of the 0.1 code got through. Every refusal is one
clear line with exit code 1 (a security check, named) or 2 (usage or configuration),
and nothing stored changes.
"""

from __future__ import annotations

import os
import shutil

import pytest
from helpers import Env, pipeline_key, snapshot

from aegis.crypto.keys import generate_key


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
    ],
    ids=["alias-bomb", "duplicate-key", "python-tag", "deep-nesting"],
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
