"""The ``aegis`` command line: lazy imports, exit codes, one-line errors, init, trust, audit."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import snapshot

import aegis

BIN = Path(sys.executable).parent
CHECKOUT = Path(aegis.__file__).resolve().parent.parent


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _trust_list(cli, root: Path) -> dict[str, dict]:
    res = cli("--workspace", root, "--json", "trust", "list")
    assert res.code == 0, res.err
    return {e["name"]: e for e in json.loads(res.out)}


# -- process-level behaviour ----------------------------------------------------------------


def test_cli_import_is_lazy():
    heavy = ("prefect", "dvc", "pandas", "model_signing", "sklearn")
    code = (
        "import aegis.cli, sys; "
        f"bad = sorted(m for m in sys.modules if m.startswith({heavy!r})); "
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_help_in_subprocess():
    proc = subprocess.run([str(BIN / "aegis"), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for command in ("init", "ingest", "run", "keys", "trust", "data", "audit"):
        assert command in proc.stdout
    assert proc.stderr == ""


def test_nonexistent_workspace_is_a_usage_error(cli, tmp_path):
    res = cli("--workspace", tmp_path / "nonexistent", "trust", "list")
    assert res.code == 2
    line = _one_line(res.err)
    assert line.startswith("error:")
    assert "not an Aegis workspace" in line


def test_no_workspace_found_from_cwd(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("AEGIS_WORKSPACE", raising=False)
    res = cli("trust", "list", cwd=tmp_path)
    assert res.code == 2
    assert "not inside an Aegis workspace" in _one_line(res.err)


def test_missing_required_option_exits_2(cli, tmp_path):
    res = cli("data", "publish", tmp_path / "src.csv", "--key", tmp_path / "k.pem")
    assert res.code == 2
    assert "Traceback" not in res.err
    assert not (tmp_path / "src.csv").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("data", "publish", "src.csv", "--key", "k.pem"), "--name"),
        (("bogus",), "No such command"),
        (("--json", "audit", "show", "--last", "0"), "--last"),
        ((), "Usage"),
    ],
    ids=["missing-option", "unknown-command", "bad-value", "no-args"],
)
def test_usage_errors_are_reported_as_usage(cli, args, expected):
    res = cli(*args)
    assert res.code == 2
    assert "internal error" not in res.err
    assert expected in res.err + res.out


# -- init ------------------------------------------------------------------------------------


def test_init_twice_changes_nothing(cli, tmp_path):
    root = tmp_path / "ws"
    first = cli("init", root, "--admin-key-out", tmp_path / "admin.pem")
    assert first.code == 0, first.err
    assert "Initialized" in first.out
    assert (root / ".aegis" / "workspace.json").is_file()
    # everything init made is committed or git-ignored
    status = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True
    )
    assert status.stdout == ""
    before = snapshot(root)

    second = cli("init", root)

    assert second.code == 0, second.err
    assert "nothing changed" in second.out
    assert "Initialized" not in second.out
    assert snapshot(root) == before
    res = cli("--workspace", root, "audit", "verify")
    assert res.code == 0, res.err


def test_init_in_source_checkout_is_refused(cli):
    assert (CHECKOUT / "pyproject.toml").is_file()
    had_dvc = (CHECKOUT / ".dvc").exists()
    res = cli("init", ".", "--admin-key-out", "/tmp/never-written.pem", cwd=CHECKOUT)
    assert res.code == 2
    assert "source checkout" in _one_line(res.err)
    assert (CHECKOUT / ".dvc").exists() == had_dvc
    assert not (CHECKOUT / ".aegis").exists()


def test_init_on_a_file_is_refused(cli, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    res = cli("init", target, "--admin-key-out", tmp_path / "admin.pem")
    assert res.code == 2
    assert "not a directory" in _one_line(res.err)


def test_init_needs_an_admin_key_path_outside_the_workspace(cli, tmp_path):
    root = tmp_path / "ws"
    res = cli("init", root)
    assert res.code == 2 and "--admin-key-out" in _one_line(res.err)
    res = cli("init", root, "--admin-key-out", root / "admin.pem")
    assert res.code == 2 and "outside the workspace" in _one_line(res.err)
    assert not root.exists()  # nothing was created
    res = cli("init", root, "--admin-key-out", tmp_path / "admin.pem")
    assert res.code == 0, res.err
    assert (tmp_path / "admin.pem").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in (root / ".aegis" / "keys").iterdir()) == [
        "pipeline.pem", "pipeline.pem.pub"
    ]  # fmt: skip
    res = cli("init", tmp_path / "ws2", "--admin-key-out", tmp_path / "admin.pem")
    assert res.code == 2 and "already exists" in _one_line(res.err)


# -- trust --------------------------------------------------------------------------------------


def test_trust_retire_and_revoke(cli, env):
    root = env.root
    admin = ("--admin-key", env.admin_key)
    res = cli("--workspace", root, "trust", "retire", "ops", "--reason", "rotated", *admin)
    assert res.code == 0, res.err
    assert "'ops' is now retired" in res.out
    res = cli("--workspace", root, "trust", "revoke", "acme", "--reason", "key leaked", *admin)
    assert res.code == 0, res.err

    entries = _trust_list(cli, root)
    assert (entries["ops"]["status"], entries["ops"]["reason"]) == ("retired", "rotated")
    assert (entries["acme"]["status"], entries["acme"]["reason"]) == ("revoked", "key leaked")
    assert entries["admin"]["status"] == "active"
    assert all("public_key" not in e for e in entries.values())

    # the table view names both
    res = cli("--workspace", root, "trust", "list")
    assert res.code == 0
    assert "retired" in res.out and "revoked" in res.out

    # each change is committed and audited
    res = cli("--workspace", root, "--json", "audit", "show", "--last", "2")
    actions = [(e["action"], e["details"]["name"]) for e in json.loads(res.out)]
    assert actions == [("trust.retire", "ops"), ("trust.revoke", "acme")]
    log = subprocess.run(
        ["git", "-C", str(root), "log", "-2", "--format=%s"], capture_output=True, text=True
    )
    assert log.stdout.splitlines() == [
        "trust: revoke 'acme': key leaked",
        "trust: retire 'ops': rotated",
    ]
    assert cli("--workspace", root, "audit", "verify").code == 0

    # a revoked supplier's dataset is refused; a retired operator cannot act
    res = cli("--workspace", root, "ingest", env.dataset, "--name", "digits")
    assert res.code == 1
    assert _one_line(res.err).startswith("refused: signer:")
    res = cli(
        "--workspace", root, "ingest", env.dataset, "--name", "digits", "--key", env.operator_key
    )
    assert res.code == 1
    assert "refused: signer:" in res.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("trust", "retire", "nobody"), "no trust entry named 'nobody'"),
        (("trust", "revoke", "pipeline"), "pipeline key is managed by the workspace"),
        (("trust", "revoke", "admin"), "last active admin"),
    ],
    ids=["unknown-name", "pipeline-key", "last-admin"],
)
def test_trust_change_usage_errors(cli, env, args, message):
    before = snapshot(env.root)
    res = cli("--workspace", env.root, *args, "--admin-key", env.admin_key)
    assert res.code == 2
    assert message in _one_line(res.err)
    assert snapshot(env.root) == before


def test_trust_status_change_twice_is_refused(cli, env):
    admin = ("--admin-key", env.admin_key)
    assert cli("--workspace", env.root, "trust", "revoke", "ops", *admin).code == 0
    before = snapshot(env.root)
    for op in ("revoke", "retire"):
        res = cli("--workspace", env.root, "trust", op, "ops", *admin)
        assert res.code == 2
        assert "already revoked" in _one_line(res.err)
    assert snapshot(env.root) == before


def test_trust_change_with_non_admin_key_is_refused(cli, env):
    before = snapshot(env.root)
    res = cli("--workspace", env.root, "trust", "retire", "acme", "--admin-key", env.operator_key)
    assert res.code == 1
    line = _one_line(res.err)
    assert line.startswith("refused:")
    assert "admin" in line
    assert snapshot(env.root) == before
    assert _trust_list(cli, env.root)["acme"]["status"] == "active"


def test_hand_edited_trust_store_is_refused(cli, env):
    path = env.root / ".aegis" / "trust.json"
    data = json.loads(path.read_text())
    edited = 0
    for record in data["changes"]:
        entry = record["change"].get("entry")
        if entry and entry["owner"] == "alice":
            entry["owner"] = "mallory"
            edited += 1
    assert edited == 1
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")

    res = cli("--workspace", env.root, "trust", "list")
    assert res.code == 1
    line = _one_line(res.err)
    assert line.startswith("refused: trust-store:")
    assert "signature does not verify" in line


def test_allow_older_needs_an_operator_key(cli, env):
    before = snapshot(env.root)
    for command in (
        ("ingest", env.dataset, "--name", "digits", "--allow-older"),
        ("run", "--source", env.dataset, "--name", "digits", "--allow-older"),
    ):
        res = cli("--workspace", env.root, *command)
        assert res.code == 2
        assert "--key" in _one_line(res.err)
    assert snapshot(env.root) == before


# -- audit ---------------------------------------------------------------------------------------


def test_audit_show_last_json(cli, env):
    res = cli("--workspace", env.root, "--json", "audit", "show", "--last", "2")
    assert res.code == 0, res.err
    entries = json.loads(res.out)
    assert [e["seq"] for e in entries] == [1, 2]
    assert [e["action"] for e in entries] == ["trust.add", "trust.add"]
    assert [e["details"]["name"] for e in entries] == ["acme", "ops"]
    assert entries[1]["prev"] == entries[0]["hash"]

    res = cli("--workspace", env.root, "audit", "show")
    assert res.code == 0
    assert "workspace.init" in res.out and "trust.add" in res.out


def test_audit_show_json_after_subcommand(cli, env):
    res = cli("--workspace", env.root, "audit", "show", "--last", "2", "--json")
    assert res.code == 0, res.err
    assert len(json.loads(res.out)) == 2


def test_audit_verify_ok(cli, env):
    res = cli("--workspace", env.root, "audit", "verify")
    assert res.code == 0, res.err
    assert "audit log OK" in res.out
    assert "3 entries" in res.out


def _edit_line(log: Path) -> None:
    lines = log.read_text().splitlines(keepends=True)
    entry = json.loads(lines[1])
    entry["details"]["owner"] = "mallory"
    lines[1] = json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n"
    log.write_text("".join(lines))


def _drop_last_line(log: Path) -> None:
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-1]))


def _cut_mid_line(log: Path) -> None:
    data = log.read_bytes()
    log.write_bytes(data[: len(data) - 40])


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_edit_line, "entry 1 (trust.add): content was edited"),
        (_drop_last_line, "log truncated"),
        (_cut_mid_line, "not a valid audit entry"),
    ],
    ids=["edited-line", "truncated", "cut-mid-line"],
)
def test_audit_verify_detects_tampering(cli, env, tamper, message):
    tamper(env.root / ".aegis" / "audit" / "log.jsonl")
    res = cli("--workspace", env.root, "audit", "verify")
    assert res.code == 1
    line = _one_line(res.err)
    assert line.startswith("refused: audit:")
    assert message in line


def test_audit_verify_detects_trust_store_rollback(cli, env):
    trust = env.root / ".aegis" / "trust.json"
    old = env.root.parent / "trust.json.old"
    shutil.copy2(trust, old)
    res = cli(
        "--workspace", env.root, "trust", "retire", "ops", "--reason", "rotated",
        "--admin-key", env.admin_key,
    )  # fmt: skip
    assert res.code == 0, res.err
    assert cli("--workspace", env.root, "audit", "verify").code == 0

    shutil.copy2(old, trust)  # an older, validly signed state

    listed = cli("--workspace", env.root, "trust", "list")  # shown, and refused after the table
    assert listed.code == 1 and "ops" in listed.out
    assert _one_line(listed.err).startswith("refused: trust-store:")
    res = cli("--workspace", env.root, "audit", "verify")
    assert res.code == 1
    line = _one_line(res.err)
    assert line.startswith("refused: trust-store:")
    assert "rolled back" in line


def test_ingest_refuses_after_trust_store_rollback_undoes_revocation(cli, env):
    """Restoring a pre-revocation trust.json must not make a revoked supplier trusted again."""
    trust = env.root / ".aegis" / "trust.json"
    old = env.root.parent / "trust.json.old"
    shutil.copy2(trust, old)
    res = cli(
        "--workspace", env.root, "trust", "revoke", "acme", "--reason", "key leaked",
        "--admin-key", env.admin_key,
    )  # fmt: skip
    assert res.code == 0, res.err
    shutil.copy2(old, trust)  # undo the revocation with an older signed store
    before = snapshot(env.root)

    res = cli("--workspace", env.root, "ingest", env.dataset, "--name", "digits")

    assert res.code == 1, res.out
    assert _one_line(res.err).startswith("refused: trust-store:")
    assert snapshot(env.root) == before
    assert not (env.root / "data" / "digits").exists()


# -- the configured Prefect server -----------------------------------------------------------


def _closed_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/api"


def test_a_flow_command_refuses_a_server_that_does_not_answer(cli, env, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", _closed_url())
    monkeypatch.delenv("AEGIS_PREFECT_WAIT_S", raising=False)
    before = snapshot(env.root)
    res = cli("--workspace", env.root, "run", "--source", env.dataset, "--name", "digits",
              "--key", env.operator_key)  # fmt: skip
    assert res.code == 2
    assert _one_line(res.err).startswith("error: Prefect server unreachable at http://127.0.0.1:")
    assert snapshot(env.root) == before


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "7200"])
def test_the_server_wait_must_be_seconds(cli, env, monkeypatch, value):
    monkeypatch.setenv("PREFECT_API_URL", _closed_url())
    monkeypatch.setenv("AEGIS_PREFECT_WAIT_S", value)
    res = cli("--workspace", env.root, "promote", "digits-model@v1", "--key", env.operator_key)
    assert res.code == 2
    assert f"AEGIS_PREFECT_WAIT_S={value!r}: seconds to wait" in _one_line(res.err)


def test_a_server_that_is_starting_is_waited_for(monkeypatch, capsys):
    """A server answers 503 while it starts (a refused connection takes the same path)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from aegis.cli.service_cmds import _reachable
    from aegis.errors import ConfigError

    asked = []

    class Starting(BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            self.send_response(503 if len(asked) < 3 else 200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Starting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("AEGIS_PREFECT_WAIT_S", "120")
        _reachable(f"http://127.0.0.1:{server.server_address[1]}/api")
    finally:
        server.shutdown()
        server.server_close()
    assert asked == ["/api/health"] * 3
    assert "waiting up to 120 s for the Prefect server" in capsys.readouterr().err
    monkeypatch.setenv("AEGIS_PREFECT_WAIT_S", "0.5")  # and gives up when the time is over
    with pytest.raises(ConfigError, match="unreachable"):
        _reachable(_closed_url())


def _answering(status: int):
    """A real HTTP server answering ``status`` to every request (shut down by the caller)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Fixed(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Fixed)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize(
    "status, answers", [(200, True), (401, True), (403, True), (404, False), (503, False)]
)
def test_what_counts_as_a_server_answering(monkeypatch, status, answers):
    from aegis.cli.service_cmds import _reachable
    from aegis.errors import ConfigError

    monkeypatch.setenv("AEGIS_PREFECT_WAIT_S", "0")
    server = _answering(status)
    port = server.server_address[1]
    try:
        url = f"http://someone:secret@127.0.0.1:{port}/api"  # credentials are not a host
        if answers:
            _reachable(url)
        else:
            with pytest.raises(ConfigError, match=f"HTTP {status} on /health"):
                _reachable(url)
    finally:
        server.shutdown()
        server.server_close()


def test_a_port_that_speaks_no_http_is_unreachable(monkeypatch):
    import socket
    import threading

    from aegis.cli.service_cmds import _reachable
    from aegis.errors import ConfigError

    listener = socket.create_server(("127.0.0.1", 0))

    def garbage() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    conn.recv(1024)
                    conn.sendall(b"SSH-2.0-OpenSSH\r\n")

    threading.Thread(target=garbage, daemon=True).start()
    monkeypatch.setenv("AEGIS_PREFECT_WAIT_S", "0")
    try:
        with pytest.raises(ConfigError, match=r"unreachable at .*BadStatusLine"):
            _reachable(f"http://127.0.0.1:{listener.getsockname()[1]}/api")
    finally:
        listener.close()
