"""Tests of the audit log's copy off the machine (``audit.ship_to``) against a real S3 endpoint.

moto_server plays S3: it enforces ``If-None-Match`` and refuses to delete a
version under COMPLIANCE retention (``AccessDenied``); it answers
``get_object_retention`` with a 500, so retention is never read back here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from helpers import Env, pipeline_key, verify_log

from aegis import vcs
from aegis.audit import HEAD_FORMAT, AuditEntry
from aegis.audit_ship import Shipper, entry_key, seq_of
from aegis.config import override_params
from aegis.crypto.keys import canonical_json
from aegis.errors import RefusedError

pytestmark = pytest.mark.integration
PREFIX = "team/audit/"


# -- helpers -----------------------------------------------------------------------------


def new_bucket(*, lock: bool = False) -> str:
    name = f"aegis-audit-{uuid.uuid4().hex[:16]}"
    boto3.client("s3").create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock)
    return name


def ship_to(env: Env, bucket: str, *, retention_days: int = 365) -> str:
    """Sets ``audit.ship_to`` in the workspace's params.yaml and commits it."""
    url = f"s3://{bucket}/{PREFIX}"
    override_params(
        env.root / "params.yaml", {"audit": {"ship_to": url, "retention_days": retention_days}}
    )
    vcs.commit_paths(env.root, "test: audit.ship_to", ["params.yaml"])
    return url


def local_lines(env: Env) -> list[bytes]:
    return env.ws.audit().log_path.read_bytes().splitlines(keepends=True)


def remote_lines(bucket: str) -> list[bytes]:
    """The shipped entries' bytes in key order (the objects' current versions)."""
    s3 = boto3.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return [s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in sorted(keys)]


def note(env: Env, text: str) -> AuditEntry:
    """Any append (one the pipeline makes without a commit, so git anchors nothing of it)."""
    ledger = env.ledger()
    return ledger.append("test.note", actor=ledger.pipeline_key().key_id, details={"note": text})


def resign(env: Env, lines: list[bytes]) -> None:
    """The attacker who holds the pipeline key: writes ``lines`` as the log, signs its head."""
    log = env.ws.audit()
    data = b"".join(lines)
    last = json.loads(lines[-1])
    claim = {
        "format": HEAD_FORMAT,
        "seq": last["seq"],
        "hash": last["hash"],
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    key = pipeline_key(env.ws)
    head = {**claim, "key_id": key.key_id, "signature": key.sign(canonical_json(claim))}
    log.log_path.write_bytes(data)
    log.head_path.write_bytes(json.dumps(head, sort_keys=True).encode() + b"\n")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused(check: str, call, *fragments: str) -> RefusedError:
    with pytest.raises(RefusedError) as info:
        call()
    assert info.value.check == check, info.value
    for fragment in fragments:
        assert fragment in str(info.value), info.value
    return info.value


# -- shipping ---------------------------------------------------------------------------


def test_every_entry_is_shipped_on_ingest_and_any_append(cli, env: Env, s3_endpoint: str) -> None:
    bucket = new_bucket()
    url = ship_to(env, bucket)
    before = len(local_lines(env))

    res = cli("--workspace", env.root, "ingest", env.dataset, "--name", "digits")
    assert res.code == 0, res.err
    lines = local_lines(env)
    assert len(lines) == before + 1
    # the entries from before ship_to was set are caught up; each object is the exact line
    assert remote_lines(bucket) == lines
    s3 = boto3.client("s3")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [f"{PREFIX}{seq:012d}.json" for seq in range(len(lines))]
    assert json.loads(remote_lines(bucket)[-1])["action"] == "ingest.accepted"

    entry = note(env, "any append ships")
    assert remote_lines(bucket) == local_lines(env)
    assert json.loads(remote_lines(bucket)[-1])["seq"] == entry.seq

    res = cli("--workspace", env.root, "audit", "verify", "--remote")
    assert res.code == 0, res.err
    assert "audit log OK" in res.out
    assert f"remote copy OK: {entry.seq + 1} entries at {url}" in res.out
    assert "no Object Lock" in res.out


def test_keys_and_prefix_parsing() -> None:
    assert entry_key(prefix="a/b/", seq=7) == "a/b/000000000007.json"
    assert seq_of(prefix="a/b/", key="a/b/000000000007.json") == 7
    for stray in ("a/b/7.json", "a/b/000000000007.json.bak", "a/c/000000000007.json", "a/b/x"):
        assert seq_of(prefix="a/b/", key=stray) is None
    assert Shipper(url="s3://bucket/audit", retention_days=1).prefix == "audit/"
    assert Shipper(url="s3://bucket", retention_days=1).prefix == ""


def test_locked_bucket_refuses_to_delete_a_shipped_entry(cli, env: Env, s3_endpoint: str) -> None:
    bucket = new_bucket(lock=True)
    url = ship_to(env, bucket, retention_days=1)
    entry = note(env, "kept for a day")
    assert remote_lines(bucket) == local_lines(env)
    s3 = boto3.client("s3")
    key = entry_key(prefix=PREFIX, seq=entry.seq)
    [version] = s3.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]

    # COMPLIANCE retention: the endpoint refuses to delete the version, bypass or not
    for bypass in ({}, {"BypassGovernanceRetention": True}):
        with pytest.raises(ClientError) as info:
            s3.delete_object(Bucket=bucket, Key=key, VersionId=version["VersionId"], **bypass)
        assert info.value.response["Error"]["Code"] == "AccessDenied"
    res = cli("--workspace", env.root, "audit", "verify", "--remote")
    assert res.code == 0, res.err
    assert "Object Lock (COMPLIANCE)" in res.out

    # what someone with the bucket's credentials can still do is visible: a newer version
    # over an entry, or a delete marker, while the locked first version stays
    s3.put_object(Bucket=bucket, Key=key, Body=b'{"forged": true}\n')
    res = cli("--workspace", env.root, "audit", "verify", "--remote")
    assert res.code == 1
    assert f"refused: audit-remote: entry {entry.seq}: overwritten or deleted at {url}" in res.err
    assert "2 versions" in res.err
    earlier = entry_key(prefix=PREFIX, seq=1)
    s3.delete_object(Bucket=bucket, Key=earlier)  # a delete marker
    res = cli("--workspace", env.root, "audit", "verify", "--remote")
    assert res.code == 1
    assert "audit-remote: entry 1: overwritten or deleted" in res.err
    assert "1 delete markers" in res.err
    assert s3.get_object(Bucket=bucket, Key=earlier, VersionId=_first_version(s3, bucket, earlier))


def _first_version(s3, bucket: str, key: str) -> str:
    return s3.list_object_versions(Bucket=bucket, Prefix=key)["Versions"][-1]["VersionId"]


def test_without_object_lock_a_deleted_entry_is_named(cli, env: Env, s3_endpoint: str) -> None:
    bucket = new_bucket()
    url = ship_to(env, bucket)
    note(env, "one")
    s3 = boto3.client("s3")
    key = entry_key(prefix=PREFIX, seq=1)
    [version] = s3.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
    s3.delete_object(Bucket=bucket, Key=key, VersionId=version["VersionId"])  # nothing stops it
    res = cli("--workspace", env.root, "audit", "verify", "--remote")
    assert res.code == 1
    assert (
        f"refused: audit-remote: entry 1: missing at {url} although later entries were "
        "shipped (deleted there)"
    ) in res.err


# -- the attacker with the pipeline key --------------------------------------------------


def test_rewritten_and_resigned_log_passes_locally_but_not_against_the_remote(
    cli, env: Env, s3_endpoint: str
) -> None:
    bucket = new_bucket(lock=True)
    url = ship_to(env, bucket)
    entry = note(env, "the approver said no")
    shipped = remote_lines(bucket)

    # rewrite the head entry, re-hash it and re-sign the head with the pipeline key
    lines = local_lines(env)
    forged = dataclasses.replace(entry, details={"note": "the approver said yes"})
    lines[-1] = dataclasses.replace(forged, hash=forged.compute_hash()).line()
    resign(env, lines)
    assert verify_log(env.ws).entries == len(lines)
    res = cli("--workspace", env.root, "audit", "verify")
    assert res.code == 0, res.err

    res = cli("--workspace", env.root, "audit", "verify", "--remote")
    assert res.code == 1
    assert "audit log OK" in res.out
    assert (
        f"refused: audit-remote: entry {entry.seq}: differs from the copy shipped to {url} "
        "(the local log was rewritten)"
    ) in res.err

    # nothing is chained onto the rewritten log, and the remote keeps the original
    refused("audit-remote", lambda: note(env, "next"), f"entry {entry.seq}: differs")
    assert local_lines(env) == lines
    assert remote_lines(bucket) == shipped


def test_truncated_and_resigned_log_passes_locally_but_not_against_the_remote(
    cli, env: Env, s3_endpoint: str
) -> None:
    bucket = new_bucket()
    url = ship_to(env, bucket)
    first = note(env, "kept")
    note(env, "to be hidden")
    note(env, "to be hidden too")

    kept = local_lines(env)[: first.seq + 1]
    resign(env, kept)
    assert cli("--workspace", env.root, "audit", "verify").code == 0

    res = cli("--workspace", env.root, "audit", "verify", "--remote")
    assert res.code == 1
    assert (
        f"refused: audit-remote: entry {first.seq + 1}: shipped to {url}, but missing from the "
        "local log (truncated or rewritten locally)"
    ) in res.err
    refused(
        "audit-remote", lambda: note(env, "over the gap"), f"entry {first.seq + 1}: shipped",
        "nothing was appended",
    )  # fmt: skip
    assert local_lines(env) == kept


# -- when shipping fails ------------------------------------------------------------------


def test_missing_bucket_refuses_before_anything_changes(cli, env: Env, s3_endpoint: str) -> None:
    bucket = f"aegis-audit-{uuid.uuid4().hex[:16]}"  # not created yet
    url = ship_to(env, bucket)
    before = local_lines(env)
    head = vcs.head_commit(env.root)
    trust = env.ws.trust_path.read_bytes()

    res = cli("--workspace", env.root, "ingest", env.dataset, "--name", "digits")
    assert res.code == 1
    assert f"refused: audit-ship: cannot ship to {url} (NoSuchBucket); nothing was appended" in (
        res.err.replace("\n", "")
    )
    out = env.root.parent / "keys" / "ops2.pem"
    res = cli(
        "--workspace", env.root, "keys", "new", "--role", "operator", "--name", "ops2",
        "--owner", "dave", "--out", out, "--admin-key", env.admin_key,
    )  # fmt: skip
    assert res.code == 1
    assert "audit-ship" in res.err
    refused("audit-ship", lambda: note(env, "x"), "NoSuchBucket")

    # refused before the dataset was stored, the key made or the trust store changed
    assert local_lines(env) == before
    assert vcs.head_commit(env.root) == head
    assert env.ws.trust_path.read_bytes() == trust
    assert not out.exists()
    assert not (env.root / "data" / "digits").exists()
    assert verify_log(env.ws).entries == len(before)
    assert cli("--workspace", env.root, "audit", "verify").code == 0

    # once the bucket exists, the next append ships everything from the first entry on
    boto3.client("s3").create_bucket(Bucket=bucket)
    res = cli("--workspace", env.root, "ingest", env.dataset, "--name", "digits")
    assert res.code == 0, res.err
    assert remote_lines(bucket) == local_lines(env)


def test_entry_unshipped_after_the_local_write_is_reported_then_caught_up(
    cli, env: Env, s3_endpoint: str, monkeypatch
) -> None:
    bucket = new_bucket()
    url = ship_to(env, bucket)
    note(env, "shipped")
    ledger = env.ledger()
    client = ledger._shipper().client
    real_put = client.put_object

    def unreachable(**request):
        raise EndpointConnectionError(endpoint_url="http://s3.invalid")

    monkeypatch.setattr(client, "put_object", unreachable)  # the endpoint dies mid-append
    actor = ledger.pipeline_key().key_id
    error = refused(
        "audit-ship", lambda: ledger.append("test.note", actor=actor),
        "was written to the local log but not shipped", "verify --remote",
    )  # fmt: skip
    seq = len(local_lines(env)) - 1
    assert f"entry {seq} was written" in str(error)
    assert verify_log(env.ws).entries == seq + 1  # the local log stays verifiable
    assert cli("--workspace", env.root, "audit", "verify").code == 0
    res = cli("--workspace", env.root, "audit", "verify", "--remote")
    assert res.code == 1
    assert f"refused: audit-ship: 1 of {seq + 1} entries unshipped (entry {seq} not at {url})" in (
        res.err.replace("\n", "")
    )

    monkeypatch.setattr(client, "put_object", real_put)
    ledger.append("test.note", actor=actor)  # ships the missing entry first, then its own
    assert remote_lines(bucket) == local_lines(env)
    assert len(local_lines(env)) == seq + 2
    assert cli("--workspace", env.root, "audit", "verify", "--remote").code == 0


def test_remote_without_ship_to_is_a_usage_error(cli, env: Env) -> None:
    res = cli("--workspace", env.root, "audit", "verify", "--remote")
    assert res.code == 2
    assert "--remote: audit.ship_to is not set in params.yaml" in res.err


def test_unreachable_endpoint(cli, env: Env, s3_endpoint: str, monkeypatch) -> None:
    url = ship_to(env, "aegis-audit-nowhere")
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    res = cli("--workspace", env.root, "audit", "verify", "--remote")
    assert res.code == 2
    message = res.err.replace("\n", "")
    assert f"error: audit.ship_to {url}: S3 endpoint {endpoint} unreachable" in message
    before = local_lines(env)
    refused("audit-ship", lambda: note(env, "x"), f"cannot ship to {url}", "nothing was appended")
    assert local_lines(env) == before


def test_params_path_is_what_the_ledger_reads(env: Env) -> None:
    """The ledger re-reads ``audit`` when params.yaml changes (no stale ship_to)."""
    ledger = env.ledger()
    assert ledger._shipper() is None
    override_params(env.root / "params.yaml", {"audit": {"ship_to": "s3://some-bucket/x"}})
    shipper = ledger._shipper()
    assert shipper is not None and (shipper.bucket, shipper.prefix) == ("some-bucket", "x/")
    Path(env.root / "params.yaml").write_text(
        Path(env.root / "params.yaml").read_text().replace("s3://some-bucket/x", "null")
    )
    assert ledger._shipper() is None
