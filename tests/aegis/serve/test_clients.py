"""API clients: tokens shown once, keyed hashes in a signed, audited list; hostile changes."""

from __future__ import annotations

import json

import pytest
from serve_helpers import MODEL

from aegis.errors import RefusedError
from aegis.ledger import Ledger
from aegis.serve.clients import list_path, load_clients, read_secret, secret_path, token_hash


def test_new_prints_the_token_alone_on_the_last_line(served, cli):
    result = cli(
        "keys", "api", "new", "--name", "mobile", "--scopes", "predict", "--rate", "50/s",
        "--quota", "5000/day", "--key", str(served.env.operator_key), cwd=served.root,
    )  # fmt: skip
    assert result.code == 0, result.err
    token = result.out.strip().splitlines()[-1]
    assert token.startswith("aegis_") and len(token) == 49
    clients = load_clients(Ledger.load(served.env.ws))
    mobile = clients.get("mobile")
    assert mobile is not None and str(mobile.rate) == "50/s" and str(mobile.quota) == "5000/day"
    # only the keyed hash is stored, anywhere in the workspace's files
    assert mobile.token_hash == token_hash(read_secret(served.env.ws), token)
    for path in [list_path(served.env.ws), served.root / ".aegis/audit/log.jsonl"]:
        assert token not in path.read_text()


def test_list_never_shows_hashes(served, cli):
    result = cli("keys", "api", "list", "--json", cwd=served.root)
    assert result.code == 0
    rows = json.loads(result.out)
    assert {r["name"] for r in rows} >= {"app", "tiny"}
    assert all("token_hash" not in r for r in rows)


@pytest.mark.parametrize(
    "args, code",
    [
        (["--name", "app"], 2),  # names are never reused
        (["--name", "../evil"], 2),
        (["--name", "x\x1b[31m"], 2),
        (["--name", "ok", "--scopes", "root"], 2),
        (["--name", "ok", "--rate", "fast"], 2),
        (["--name", "ok", "--quota", "0/day"], 2),
    ],
)
def test_bad_new_arguments_are_usage_errors(served, cli, args, code):
    before = (served.root / ".aegis/audit/log.jsonl").read_bytes()
    result = cli("keys", "api", "new", *args, "--key", str(served.env.operator_key),
                 cwd=served.root)  # fmt: skip
    assert result.code == code, result.err
    assert (served.root / ".aegis/audit/log.jsonl").read_bytes() == before


def test_only_an_operator_changes_the_list(served, cli):
    result = cli("keys", "api", "new", "--name", "x", "--key", str(served.env.approver_key),
                 cwd=served.root)  # fmt: skip
    assert result.code == 1 and "signer" in result.err
    assert cli("keys", "api", "new", "--name", "x", cwd=served.root).code == 2  # no key


def test_revoke_twice_and_unknown(served, cli):
    key = str(served.env.operator_key)
    assert cli("keys", "api", "revoke", "gone", "--key", key, cwd=served.root).code == 0
    assert cli("keys", "api", "revoke", "gone", "--key", key, cwd=served.root).code == 2
    assert cli("keys", "api", "revoke", "nobody", "--key", key, cwd=served.root).code == 2
    assert load_clients(Ledger.load(served.env.ws)).get("gone").status == "revoked"


def test_the_file_copy_is_never_read(served):
    """A planted or older list file changes nothing: the audit entry's document decides."""
    ws = served.env.ws
    path = list_path(ws)
    document = json.loads(path.read_text())
    document["body"]["clients"][0]["scopes"] = ["admin", "predict"]
    path.write_text(json.dumps(document))
    clients = load_clients(Ledger.load(ws))
    assert clients.get(document["body"]["clients"][0]["name"]).scopes == ("predict",)


def test_a_list_signed_by_a_revoked_operator_is_refused(served, cli):
    result = cli("trust", "revoke", "ops", "--reason", "left", "--admin-key",
                 str(served.env.admin_key), cwd=served.root)  # fmt: skip
    assert result.code == 0, result.err
    with pytest.raises(RefusedError, match="api-clients"):
        load_clients(Ledger.load(served.env.ws))


def test_a_readable_secret_is_refused(served):
    secret_path(served.env.ws).chmod(0o644)
    with pytest.raises(RefusedError, match="key-permissions"):
        read_secret(served.env.ws)


def _revoke_ops_and_add_an_operator(served, cli, tmp_path):
    from aegis.trust_ops import new_key

    result = cli("trust", "revoke", "ops", "--reason", "left", "--admin-key",
                 str(served.env.admin_key), cwd=served.root)  # fmt: skip
    assert result.code == 0, result.err
    ops2 = tmp_path / "ops2.pem"
    new_key(served.env.ws, role="operator", name="ops2", owner="platform", out=ops2,
            admin_key=served.env.admin_key)  # fmt: skip
    return ops2


def test_a_running_gateway_fails_closed_until_an_operator_resigns(served, cli, tmp_path):
    from aegis.serve.gateway import Gateway, GatewayConfig, GatewayError

    config = GatewayConfig(workspace=str(served.root), target=f"{MODEL}#prod",
                           key=str(served.serving_key))  # fmt: skip
    gw = Gateway(config)
    try:
        header = f"Bearer {served.tokens['app']}"
        assert gw.authenticate(header, scope="predict").name == "app"
        ops2 = _revoke_ops_and_add_an_operator(served, cli, tmp_path)
        with pytest.raises(GatewayError) as refused:
            gw.authenticate(header, scope="predict")
        assert refused.value.status == 503 and refused.value.reason == "api-clients"
        new = cli("keys", "api", "new", "--name", "late", "--key", str(ops2), cwd=served.root)
        assert new.code == 1 and "aegis keys api resign" in new.err
        done = cli("keys", "api", "resign", "--reason", "reviewed", "--key", str(ops2),
                   cwd=served.root)  # fmt: skip
        assert done.code == 0, done.err
        assert gw.authenticate(header, scope="predict").name == "app"
        again = cli("keys", "api", "resign", "--reason", "again", "--key", str(ops2),
                    cwd=served.root)  # fmt: skip
        assert again.code == 2 and "good standing already" in again.err
    finally:
        gw.close()
    assert load_clients(Ledger.load(served.env.ws)).signer == "ops2"


def test_an_adopted_list_can_be_narrowed(served, cli, tmp_path):
    ops2 = _revoke_ops_and_add_an_operator(served, cli, tmp_path)
    result = cli("keys", "api", "revoke", "gone", "--reason", "added by ops", "--key",
                 str(ops2), cwd=served.root)  # fmt: skip
    assert result.code == 0, result.err
    clients = load_clients(Ledger.load(served.env.ws))
    assert clients.signer == "ops2" and clients.get("gone").status == "revoked"
