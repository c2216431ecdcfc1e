"""Verified ingest from a directory: acceptance, and the tamper matrix.

Every refusal is checked for its exit code, the failed check named in the
one-line message, and a workspace left exactly as it was (files, git, DVC
cache, audit log) with nothing left in staging.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from helpers import Env, snapshot

from aegis.crypto.keys import generate_key, load_private_key
from aegis.crypto.signing import KeySigner, sign_directory
from aegis.data.manifest import BUNDLE_NAME, MANIFEST_NAME
from aegis.data.publish import publish_dataset


def _flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_manifest(d: Path) -> None:
    manifest = json.loads((d / MANIFEST_NAME).read_text())
    manifest["rows"] += 1
    (d / MANIFEST_NAME).write_text(json.dumps(manifest))


def _edit_bundle_signature(d: Path) -> None:
    bundle = json.loads((d / BUNDLE_NAME).read_text())
    sig = bundle["dsseEnvelope"]["signatures"][0]
    raw = bytearray(__import__("base64").b64decode(sig["sig"]))
    raw[-1] ^= 0x01
    sig["sig"] = __import__("base64").b64encode(bytes(raw)).decode()
    (d / BUNDLE_NAME).write_text(json.dumps(bundle))


def _edit_bundle_payload(d: Path) -> None:
    import base64

    bundle = json.loads((d / BUNDLE_NAME).read_text())
    env = bundle["dsseEnvelope"]
    payload = json.loads(base64.b64decode(env["payload"]))
    digest = payload["subject"][0]["digest"]
    digest["sha256"] = "0" * 64
    env["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    (d / BUNDLE_NAME).write_text(json.dumps(bundle))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _symlink_data(d: Path) -> None:
    target = d.parent / "elsewhere.parquet"
    shutil.copy(d / "digits.parquet", target)
    (d / "digits.parquet").unlink()
    (d / "digits.parquet").symlink_to(target)


def _subdir(d: Path) -> None:
    (d / "sub").mkdir()
    (d / "sub" / "more.parquet").write_bytes(b"x")


# (case id, tamper function, expected check in the message, extra message fragment)
DIRECTORY_CASES: list[tuple[str, Callable[[Path], None], str, str]] = [
    ("byte-changed", lambda d: _flip_byte(d / "digits.parquet"), "integrity", "digits.parquet"),
    ("file-missing", lambda d: (d / "digits.parquet").unlink(), "file-set", "missing"),
    (
        "extra-file",
        lambda d: (d / "extra.parquet").write_bytes(b"PAR1"),
        "file-set",
        "extra.parquet",
    ),
    ("hidden-file", lambda d: (d / ".hidden").write_text("x"), "file-set", ".hidden"),
    ("subdirectory", _subdir, "file-set", "subdirectory 'sub'"),
    (
        "renamed",
        lambda d: (d / "digits.parquet").rename(d / "digitz.parquet"),
        "file-set",
        "renamed",
    ),
    ("symlink", _symlink_data, "symlink", "digits.parquet"),
    ("manifest-altered", _edit_manifest, "integrity", "manifest.json"),
    (
        "manifest-not-json",
        lambda d: (d / MANIFEST_NAME).write_text("{not json"),
        "integrity",
        "manifest.json",
    ),
    ("manifest-truncated", lambda d: _truncate(d / MANIFEST_NAME), "integrity", "manifest.json"),
    ("bundle-signature-altered", _edit_bundle_signature, "signature", "does not verify"),
    ("bundle-payload-altered", _edit_bundle_payload, "signature", "does not verify"),
    ("bundle-truncated", lambda d: _truncate(d / BUNDLE_NAME), "bundle", "not valid JSON"),
    (
        "bundle-not-json",
        lambda d: (d / BUNDLE_NAME).write_text("garbage"),
        "bundle",
        "not valid JSON",
    ),
    ("bundle-missing", lambda d: (d / BUNDLE_NAME).unlink(), "bundle", "no signature bundle"),
]


def _refused(
    cli, env: Env, source: Path | str, *args: str, check: str, fragment: str, code: int = 1
) -> None:
    before = snapshot(env.root)
    result = cli("--workspace", env.root, "ingest", str(source), "--name", "digits", *args)
    assert result.code == code, result.err + result.out
    lines = [ln for ln in result.err.splitlines() if ln.strip()]
    assert len(lines) == 1, result.err  # one clear line, no traceback
    assert f"{check}:" in lines[0], lines[0]
    assert fragment in lines[0], lines[0]
    assert snapshot(env.root) == before
    assert not any((env.root / ".aegis" / "staging").glob("*/")), "staging left behind"


@pytest.mark.parametrize(
    ("tamper", "check", "fragment"),
    [c[1:] for c in DIRECTORY_CASES],
    ids=[c[0] for c in DIRECTORY_CASES],
)
def test_tampered_directory_is_refused(cli, env: Env, tamper, check, fragment) -> None:
    tamper(env.dataset)
    _refused(cli, env, env.dataset, check=check, fragment=fragment)


def test_accepted_dataset_is_versioned_and_audited(cli, env: Env) -> None:
    result = cli(
        "--workspace",
        env.root,
        "--json",
        "ingest",
        env.dataset,
        "--name",
        "digits",
        "--key",
        env.operator_key,
    )
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["supplier"] == "acme" and summary["rows"] == 1797
    stored = env.root / "data" / "digits"
    assert sorted(p.name for p in stored.iterdir()) == sorted(p.name for p in env.dataset.iterdir())
    for p in env.dataset.iterdir():
        assert (stored / p.name).read_bytes() == p.read_bytes()
    dvc_file = yaml.safe_load((env.root / "data" / "digits.dvc").read_text())
    assert dvc_file["outs"][0]["md5"] == summary["dvc_md5"]
    # pushed to the local remote: the .dir object is there
    remote = env.root / ".aegis" / "dvc-remote"
    md5 = summary["dvc_md5"].removesuffix(".dir")
    assert (remote / "files" / "md5" / md5[:2] / (md5[2:] + ".dir")).is_file()
    # committed by Aegis, and the audit entry records digest, supplier, actor, DVC version
    log = [json.loads(x) for x in (env.root / ".aegis/audit/log.jsonl").read_text().splitlines()]
    entry = log[-1]
    assert entry["action"] == "ingest.accepted"
    assert entry["subjects"]["dataset"] == summary["digest"]
    assert entry["details"]["supplier"] == "acme"
    assert entry["details"]["dvc_md5"] == summary["dvc_md5"]
    assert entry["actor"] == env.ledger().trust.get("ops").key_id
    assert cli("--workspace", env.root, "audit", "verify").code == 0


def _publish(env: Env, name: str = "digits", key: Path | None = None, out: str = "v2") -> Path:
    target = env.root.parent / out
    publish_dataset(env.raw, name=name, key_path=key or env.supplier_key, out=target)
    return target


def test_unknown_signer_is_refused(cli, env: Env) -> None:
    stranger = generate_key(env.root.parent / "stranger.pem")
    _refused(cli, env, _publish(env, key=stranger.path), check="signer", fragment="unknown key")


def test_a_retired_supplier_signs_nothing_new_and_a_revoked_one_nothing_at_all(cli, env: Env):
    w = ("--workspace", env.root)
    assert cli(*w, "ingest", env.dataset, "--name", "digits").code == 0
    newer = _publish(env)
    assert cli(*w, "trust", "retire", "acme", "--admin-key", env.admin_key).code == 0
    # Retired: rotated out. What it signed and we accepted still verifies; nothing new does,
    # however early its manifest claims to have been created.
    _refused(cli, env, newer, check="signer", fragment="'acme' is retired")
    assert cli(*w, "ingest", env.dataset, "--name", "digits").code == 0
    revoke = ("trust", "revoke", "acme", "--reason", "leak", "--admin-key", env.admin_key)
    assert cli(*w, *revoke).code == 0
    _refused(cli, env, env.dataset, check="signer", fragment="revoked")


def _signed_manifest(env: Env, **changes) -> Path:
    """The supplier's own dataset with ``changes`` in its manifest, signed again (an insider)."""
    d = _publish(env, out="edited")
    manifest = json.loads((d / MANIFEST_NAME).read_text()) | changes
    (d / MANIFEST_NAME).write_text(json.dumps(manifest))
    (d / BUNDLE_NAME).unlink()
    sign_directory(d, bundle_name=BUNDLE_NAME, signer=KeySigner(env.supplier_key))
    return d


@pytest.mark.parametrize(
    "created",
    [
        "2026-01-01T00:00:00.000000Z\n\nAegis-Audit: 999 " + "f" * 64,  # a planted anchor
        "2026-01-01T00:00:00.000000Z\x1b[2J",  # a terminal escape
        "2026-01-01T00:00:00.5Z",  # orders wrongly against six-digit fractions as text
        "yesterday",
    ],
    ids=["anchor", "escape", "short-fraction", "prose"],
)
def test_a_created_field_that_is_not_one_timestamp_is_refused(cli, env: Env, created) -> None:
    _refused(cli, env, _signed_manifest(env, created=created), check="manifest", fragment="created")


def test_a_created_far_in_the_future_is_refused(cli, env: Env) -> None:
    # Accepted, it would make every honest later version "older" and lock the name out.
    d = _signed_manifest(env, created="9999-12-31T23:59:59.000000Z")
    _refused(cli, env, d, check="manifest", fragment="in the future")


def test_signer_without_supplier_role_is_refused(cli, env: Env) -> None:
    _refused(
        cli,
        env,
        _publish(env, key=env.operator_key),
        check="signer",
        fragment="role operator, not supplier",
    )


def test_wrong_name_is_refused(cli, env: Env) -> None:
    _refused(cli, env, _publish(env, name="other"), check="name", fragment="'other'")


def test_manifest_lying_under_a_valid_signature_is_refused(cli, env: Env) -> None:
    """A supplier-signed manifest whose row count disagrees with the Parquet file."""
    d = env.dataset
    (d / BUNDLE_NAME).unlink()
    manifest = json.loads((d / MANIFEST_NAME).read_text())
    manifest["files"][0]["rows"] += 5
    (d / MANIFEST_NAME).write_text(json.dumps(manifest))
    sign_directory(d, bundle_name=BUNDLE_NAME, signer=KeySigner(env.supplier_key))
    _refused(cli, env, d, check="manifest", fragment="rows")


def test_older_dataset_is_refused_unless_allowed_by_an_operator(cli, env: Env) -> None:
    newer = _publish(env)
    assert cli("--workspace", env.root, "ingest", newer, "--name", "digits").code == 0
    _refused(cli, env, env.dataset, check="replay", fragment="--allow-older")
    # --allow-older is a human decision: without an operator key it is a usage error.
    _refused(cli, env, env.dataset, "--allow-older", check="error", fragment="--key", code=2)
    ok = cli(
        "--workspace",
        env.root,
        "--json",
        "ingest",
        env.dataset,
        "--name",
        "digits",
        "--allow-older",
        "--key",
        env.operator_key,
    )
    assert ok.code == 0, ok.err
    assert json.loads(ok.out)["allowed_older"] is True
    last = (env.root / ".aegis/audit/log.jsonl").read_text().splitlines()[-1]
    assert json.loads(last)["details"]["allowed_older"] is True


def test_file_over_size_limit_is_refused(cli, env: Env) -> None:
    params = env.root / "params.yaml"
    params.write_text(params.read_text().replace("2147483648", "1000"))
    _refused(cli, env, env.dataset, check="size-limit", fragment="max_file_bytes")


def test_missing_or_empty_source_is_a_usage_error(cli, env: Env) -> None:
    _refused(cli, env, env.root.parent / "nope", check="error", fragment="not found", code=2)
    empty = env.root.parent / "empty"
    empty.mkdir()
    _refused(cli, env, empty, check="error", fragment="empty", code=2)


def test_hostile_dataset_name_is_a_usage_error(cli, env: Env) -> None:
    before = snapshot(env.root)
    result = cli("--workspace", env.root, "ingest", env.dataset, "--name", "../escape")
    assert result.code == 2 and "dataset name" in result.err
    assert snapshot(env.root) == before


def test_tampered_audit_log_blocks_ingest(cli, env: Env) -> None:
    log = env.root / ".aegis/audit/log.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[1:]) + "\n")
    _refused(cli, env, env.dataset, check="audit", fragment="entry 0")


def test_operator_key_revoked_cannot_act(cli, env: Env) -> None:
    assert (
        cli("--workspace", env.root, "trust", "revoke", "ops", "--admin-key", env.admin_key).code
        == 0
    )
    _refused(cli, env, env.dataset, "--key", env.operator_key, check="signer", fragment="revoked")


def test_ingest_same_dataset_twice_is_idempotent_in_git(cli, env: Env) -> None:
    assert cli("--workspace", env.root, "ingest", env.dataset, "--name", "digits").code == 0
    head = os.popen(f"git -C {env.root} rev-parse HEAD").read()
    assert cli("--workspace", env.root, "ingest", env.dataset, "--name", "digits").code == 0
    assert os.popen(f"git -C {env.root} rev-parse HEAD").read() == head


# -- hostile tables under a valid signature (a hostile review's findings) -------------------


def _signed_table(env: Env, table, name: str) -> Path:
    """A dataset whose Parquet holds ``table``, with a manifest and a valid supplier signature."""
    import hashlib

    import pyarrow.parquet as pq

    from aegis.data.manifest import ColumnSchema, DatasetManifest, ManifestFile
    from aegis.timeutil import utc_now

    d = env.root.parent / name
    d.mkdir()
    pq.write_table(table, d / "digits.parquet")
    data = (d / "digits.parquet").read_bytes()
    manifest = DatasetManifest(
        name="digits",
        created=utc_now(),
        supplier_key_id=load_private_key(env.supplier_key).key_id,
        files=[
            ManifestFile(
                path="digits.parquet",
                bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                rows=table.num_rows,
            )
        ],
        columns=[ColumnSchema(name=f.name, type=str(f.type)) for f in table.schema],
        rows=table.num_rows,
    )
    (d / MANIFEST_NAME).write_bytes(manifest.to_bytes())
    sign_directory(d, bundle_name=BUNDLE_NAME, signer=KeySigner(env.supplier_key))
    return d


def test_a_signed_table_with_a_list_column_is_refused(cli, env: Env) -> None:
    import pyarrow as pa

    table = pa.table({"pixel_0_0": [1.0, 2.0], "label": [[1], [2]]})
    _refused(cli, env, _signed_table(env, table, "lists"), check="schema", fragment="nested")


def test_a_signed_table_with_duplicate_column_names_is_refused(cli, env: Env) -> None:
    import pyarrow as pa

    table = pa.Table.from_arrays([pa.array([1.0]), pa.array([2.0])], names=["x", "x"])
    _refused(cli, env, _signed_table(env, table, "dups"), check="schema", fragment="duplicate")


def test_a_manifest_naming_other_columns_than_the_file_is_refused(cli, env: Env) -> None:
    import pyarrow as pa

    table = pa.table({"a": [1.0], "label": [1]})
    d = _signed_table(env, table, "cols")
    manifest = json.loads((d / MANIFEST_NAME).read_text())
    manifest["columns"][0]["name"] = "b"
    (d / MANIFEST_NAME).write_text(json.dumps(manifest))
    (d / BUNDLE_NAME).unlink()
    sign_directory(d, bundle_name=BUNDLE_NAME, signer=KeySigner(env.supplier_key))
    _refused(cli, env, d, check="manifest", fragment="columns")
