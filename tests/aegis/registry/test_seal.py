"""Sealed exports: the release encrypted to X25519 serving identities, served from memory only."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from registry_helpers import promote_in_turn
from serve_helpers import CLIENTS, MODEL, ROW_OF_ZEROS, Gateway, Served, call, served_workspace
from services import free_port

from aegis.crypto.sealing import generate_identity, seal
from aegis.errors import RefusedError
from aegis.registry.seal import ARCHIVE, LABEL, pack, unpack

pytestmark = pytest.mark.slow


@pytest.fixture
def served(released_base: Path, tmp_path: Path) -> Served:
    """v1 in prod, the gateway's signing key, one client (see ``serve_helpers``)."""
    return served_workspace(released_base, tmp_path / "env", clients={"app": CLIENTS["app"]})


def _identity(served: Served, name: str) -> Path:
    """A new X25519 serving identity, added to the trust store by the admin."""
    from aegis.trust_ops import new_key

    path = served.root.parent / "keys" / f"{name}.age"
    new_key(
        served.env.ws, role="serving", name=name, owner="platform", out=path,
        admin_key=served.env.admin_key, key_type="x25519",
    )  # fmt: skip
    return path


def _export(cli, served: Served, out: Path, *seal_to: str, target: str = f"{MODEL}#prod"):
    args = [a for s in seal_to for a in ("--seal-to", s)]
    return cli("--workspace", served.root, "export", target, out, *args)


def _serve(cli, served: Served, directory: Path, identity: Path):
    """``aegis serve DIR --identity`` in-process: only for refusals (they come before a port)."""
    return cli(
        "--workspace", served.root, "serve", directory, "--identity", identity,
        "--key", served.serving_key, "--port", str(free_port()),
    )  # fmt: skip


def _plan(served: Served, directory: Path, identity: Path):
    from aegis.serve.runner import plan

    serve_plan, _ = plan(
        served.env.ws, target=str(directory), host="127.0.0.1", port=free_port(), workers=1,
        key=served.serving_key, redis=None, identity=identity,
    )  # fmt: skip
    return serve_plan


def _weights(served: Served, version: int = 1) -> bytes:
    return (served.env.release_dir(version) / "model" / "model.safetensors").read_bytes()


def _holds_plaintext(directory: Path, weights: bytes) -> list[str]:
    """Files under ``directory`` named like the weights or holding a slice of their bytes."""
    probe = weights[len(weights) // 2 : len(weights) // 2 + 64]
    return [
        str(p)
        for p in directory.rglob("*")
        if p.is_file() and not p.is_symlink()
        and (p.name == "model.safetensors" or probe in p.read_bytes())
    ]  # fmt: skip


def test_keys_new_x25519_writes_an_identity_and_prints_its_recipient(served, cli, tmp_path):
    out = tmp_path / "host.age"
    result = cli(
        "--workspace", served.root, "keys", "new", "--role", "serving", "--type", "x25519",
        "--name", "host-a", "--owner", "platform", "--out", out,
        "--admin-key", served.env.admin_key,
    )  # fmt: skip
    assert result.code == 0, result.err
    recipient = result.out.strip().splitlines()[-1]
    assert recipient.startswith("age1") and (tmp_path / "host.age.pub").read_text().strip() == (
        recipient
    )
    assert os.stat(out).st_mode & 0o777 == 0o600
    listed = cli("--workspace", served.root, "trust", "list", "--json")
    (row,) = [r for r in json.loads(listed.out) if r["name"] == "host-a"]
    assert (row["role"], row["key_type"], row["status"]) == ("serving", "x25519", "active")
    wrong = cli(
        "--workspace", served.root, "keys", "new", "--role", "operator", "--type", "x25519",
        "--name", "x", "--owner", "o", "--out", tmp_path / "x", "--admin-key", served.env.admin_key,
    )  # fmt: skip
    assert wrong.code == 2 and "--role serving" in wrong.err


def test_a_sealed_export_is_served_with_its_identity_and_never_in_plaintext(
    served, cli, tmp_path, monkeypatch
):
    identity = _identity(served, "host-a")
    out = tmp_path / "sealed"
    result = _export(cli, served, out, str(identity) + ".pub")
    assert result.code == 0, result.err
    assert "sealed to host-a" in result.out
    assert {p.name for p in out.iterdir()} == {ARCHIVE, LABEL, "pipeline.pub", "VERIFY.md"}
    label = json.loads((out / LABEL).read_text())
    assert label["release"] == f"{MODEL}@v1.0.0"
    assert [r["name"] for r in label["recipients"]] == ["host-a"]
    weights = _weights(served)
    assert _holds_plaintext(out, weights) == []

    # the real command, over HTTP; its temporary files go where we can look
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setenv("AEGIS_SERVING_IDENTITY", str(identity))
    gw = Gateway(served, target=str(out))
    try:
        status, body, _ = call(gw.url, "/v1/predict", token=served.tokens["app"], body=ROW_OF_ZEROS)
        assert status == 200, body
        assert body["version"] == "v1.0.0"
        status, model, _ = call(gw.url, "/v1/model", token=served.tokens["app"])
        assert model["model_digest"] == label["model_digest"]
    finally:
        gw.stop()
    for place in (out, scratch, served.root / ".aegis" / "serve"):
        assert _holds_plaintext(place, weights) == [], place


def test_a_sealed_gateway_does_not_follow_prod(served, cli, tmp_path):
    from aegis.serve.gateway import Gateway as InProcess
    from aegis.serve.gateway import GatewayConfig

    identity = _identity(served, "host-a")
    out = tmp_path / "sealed"
    assert _export(cli, served, out, "host-a").code == 0  # by trust-store name
    serve_plan = _plan(served, out, identity)
    assert serve_plan.sealed and serve_plan.target == f"{MODEL}@v1.0.0"
    assert serve_plan.served.release.contents is not None
    assert "model/model.safetensors" not in serve_plan.served.release.contents  # freed
    config = GatewayConfig(
        workspace=str(served.root), target=serve_plan.target, key=str(served.serving_key),
        reload=False,
    )  # fmt: skip
    gw = InProcess(config, served=serve_plan.served)
    try:
        promote_in_turn(served.env.ws, MODEL, ["v2.0.0"])
        assert gw.check_reload() is False
        assert gw.served.version == "v1.0.0"
    finally:
        gw.close()


def test_a_wrong_or_unknown_identity_is_refused(served, cli, tmp_path):
    _identity(served, "host-a")
    other = _identity(served, "host-b")
    out = tmp_path / "sealed"
    assert _export(cli, served, out, "host-a").code == 0
    result = _serve(cli, served, out, other)
    assert result.code == 1 and "seal:" in result.err and "not sealed to" in result.err
    stranger = generate_identity(tmp_path / "stranger.age")
    result = _serve(cli, served, out, stranger.path)
    assert result.code == 1 and "seal:" in result.err and "not in the trust store" in result.err
    # a directory that is a sealed export needs --identity
    plain = cli("--workspace", served.root, "serve", out, "--key", served.serving_key)
    assert plain.code == 2 and "--identity" in plain.err


def test_a_revoked_or_retired_identity_is_refused(served, cli, tmp_path):
    a, b = _identity(served, "host-a"), _identity(served, "host-b")
    out = tmp_path / "sealed"
    assert _export(cli, served, out, "host-a", "host-b").code == 0
    admin = ("--admin-key", served.env.admin_key)
    assert cli("--workspace", served.root, "trust", "revoke", "host-a", "--reason", "stolen",
               *admin).code == 0  # fmt: skip
    assert cli("--workspace", served.root, "trust", "retire", "host-b", *admin).code == 0
    for identity, status in ((a, "revoked (stolen)"), (b, "retired")):
        result = _serve(cli, served, out, identity)
        assert result.code == 1 and "seal:" in result.err and status in result.err, result.err
    refused = _export(cli, served, tmp_path / "again", "host-a")
    assert refused.code == 1 and "seal:" in refused.err and "revoked" in refused.err
    assert not (tmp_path / "again").exists()


def test_recipients_must_be_active_x25519_serving_identities(served, cli, tmp_path):
    stranger = generate_identity(tmp_path / "stranger.age")
    for spec, code, text in (
        ("gateway", 1, "not an X25519 serving identity"),  # the gateway's P-256 signing key
        (stranger.recipient, 1, "not in the trust store"),
        (str(stranger.path) + ".pub", 1, "not in the trust store"),
        ("nobody", 2, "no trust entry named 'nobody'"),
    ):
        result = _export(cli, served, tmp_path / "out", spec)
        assert result.code == code and text in result.err, (spec, result.err)
        assert not (tmp_path / "out").exists()


def test_a_changed_archive_or_release_inside_is_refused(served, cli, tmp_path):
    identity = _identity(served, "host-a")
    out = tmp_path / "sealed"
    assert _export(cli, served, out, "host-a").code == 0
    archive = out / ARCHIVE
    original = archive.read_bytes()
    recipient = (identity.parent / "host-a.age.pub").read_text().strip()

    def refused(data: bytes, *fragments: str) -> None:
        archive.write_bytes(data)
        result = _serve(cli, served, out, identity)
        assert result.code == 1, result.err
        assert all(f in result.err for f in fragments), result.err

    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    refused(bytes(flipped), "seal:", "does not decrypt")
    refused(original[: len(original) - 100], "seal:")
    # sealed properly to the identity, but not what the pipeline signed: the signature decides
    from aegis.crypto.sealing import load_identity, unseal

    contents = unpack(unseal(original, load_identity(identity), what="x"), what="x")
    contents["metrics.json"] = contents["metrics.json"].replace(b'"clean_acc"', b'"clean_acc" ')
    refused(seal(pack(contents), [recipient]), "integrity:", "metrics.json")
    extra = dict(contents, **{"notes.txt": b"planted"})
    extra["metrics.json"] = unpack(unseal(original, load_identity(identity), what="x"), what="x")[
        "metrics.json"
    ]
    refused(seal(pack(extra), [recipient]), "file-set:", "notes.txt")
    archive.write_bytes(original)
    assert _plan(served, out, identity).served.version == "v1.0.0"  # intact again


def test_an_archive_holding_a_link_or_an_escaping_name_is_refused():
    import io
    import tarfile

    for kind in ("symlink", "dotdot", "absolute"):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo({"dotdot": "../x", "absolute": "/etc/x"}.get(kind, "model"))
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = 1
                tar.addfile(info, io.BytesIO(b"x"))
        with pytest.raises(RefusedError) as exc:
            unpack(buffer.getvalue(), what="t")
        assert exc.value.check == "seal", kind
    with pytest.raises(RefusedError, match="not a release archive"):
        unpack(b"not a tar at all" * 64, what="t")


def test_rotation_reseals_prod_and_known_good_and_the_old_identity_is_refused(
    served, cli, tmp_path
):
    old = _identity(served, "host-a")
    before = tmp_path / "before"
    assert _export(cli, served, before, "host-a").code == 0
    promote_in_turn(served.env.ws, MODEL, ["v2.0.0"])  # prod v2; v1 is known-good
    new = tmp_path / "host-a-2.age"
    result = cli(
        "--workspace", served.root, "keys", "rotate", "host-a", "--out", new,
        "--reason", "yearly", "--admin-key", served.env.admin_key,
    )  # fmt: skip
    assert result.code == 0, result.err
    printed = result.out.strip().splitlines()[-1]
    assert printed == (tmp_path / "host-a-2.age.pub").read_text().strip()
    sealed = served.root / ".aegis" / "sealed" / "host-a.2"
    assert sorted(p.name for p in sealed.iterdir()) == [f"{MODEL}@v1.0.0", f"{MODEL}@v2.0.0"]
    for version in ("v1.0.0", "v2.0.0"):
        directory = sealed / f"{MODEL}@{version}"
        assert _plan(served, directory, new).served.version == version
        assert _holds_plaintext(directory, _weights(served, int(version[1]))) == []
    # the old identity is retired: neither its old export nor anything else is served with it
    result = _serve(cli, served, before, old)
    assert result.code == 1 and "seal:" in result.err and "retired" in result.err
    result = _serve(cli, served, sealed / f"{MODEL}@v2.0.0", old)
    assert result.code == 1 and "seal:" in result.err
    # audited: the new identity, the re-seal, the retirement; the ciphertext stays out of git
    entries = served.env.ws.audit().entries()
    actions = [e.action for e in entries[-3:]]
    assert actions == ["trust.add", "seal.resealed", "trust.retire"]
    resealed = entries[-2].details
    assert resealed["releases"] == [f"{MODEL}@v2.0.0", f"{MODEL}@v1.0.0"]
    assert (resealed["name"], resealed["replaces"]) == ("host-a.2", "host-a")
    status = subprocess.run(
        ["git", "status", "--porcelain", "--", ".aegis/sealed"], cwd=served.root,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert status.stdout == ""
    assert cli("--workspace", served.root, "audit", "verify").code == 0
    # a signing key is not rotated here
    other = cli(
        "--workspace", served.root, "keys", "rotate", "gateway", "--out", tmp_path / "g.pem",
        "--admin-key", served.env.admin_key,
    )  # fmt: skip
    assert other.code == 2 and "not an X25519 serving identity" in other.err
