"""S3 staging and ingest against a real S3 endpoint (moto_server), and the S3 DVC remote.

Mirrors aegis/data/sources.py (``_stage_s3``, ``parse_s3_url``) through
``aegis.data.ingest.ingest`` and the real ``aegis ingest`` entry point.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from helpers import snapshot

from aegis import vcs
from aegis.data.ingest import ingest
from aegis.data.manifest import MANIFEST_NAME, dataset_digest
from aegis.data.publish import publish_dataset
from aegis.ledger import Ledger
from aegis.trust_ops import new_key
from aegis.workspace import init_workspace

pytestmark = pytest.mark.integration


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(directory: Path) -> dict[str, str]:
    return {p.name: _sha256(p) for p in sorted(directory.iterdir()) if p.is_file()}


def _upload(client, bucket: str, prefix: str, directory: Path) -> None:
    for path in sorted(directory.iterdir()):
        client.put_object(Bucket=bucket, Key=prefix + path.name, Body=path.read_bytes())


def _staging_empty(root: Path) -> bool:
    staging = root / ".aegis" / "staging"
    return not staging.exists() or not any(staging.iterdir())


def _set_params(root: Path, **ingest_params) -> None:
    """Writes ingest params into the workspace and commits them (a real config change)."""
    path = root / "params.yaml"
    data = yaml.safe_load(path.read_text())
    data["ingest"].update(ingest_params)
    path.write_text(yaml.safe_dump(data))
    vcs.commit_paths(root, "test: ingest params", ["params.yaml"])


@pytest.fixture
def s3(s3_endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint)


@pytest.fixture
def bucket(s3) -> str:
    name = f"aegis-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name)
    return name


# -- accepted ------------------------------------------------------------------------------


def test_ingest_from_s3_accepts_signed_dataset(env, s3, bucket):
    _upload(s3, bucket, "incoming/digits/", env.dataset)
    ws = env.ws
    actor, _ = env.ledger().actor(None)
    url = f"s3://{bucket}/incoming/digits"  # no trailing slash: the prefix is a folder

    result = ingest(env.ledger(), url, name="digits", actor=actor)

    manifest = (env.dataset / MANIFEST_NAME).read_bytes()
    assert result.name == "digits"
    assert result.digest == dataset_digest(manifest)
    assert result.files == 1
    assert result.rows == 1797
    assert result.bytes == sum(p.stat().st_size for p in env.dataset.iterdir())
    assert _files(env.root / "data" / "digits") == _files(env.dataset)
    last = ws.audit().entries()[-1]
    assert last.action == "ingest.accepted"
    assert last.subjects == {"dataset": result.digest}
    assert last.details["source"] == url
    assert last.details["supplier"] == "acme"
    assert vcs.git(env.root, "log", "-1", "--format=%H").strip() == result.commit
    # pushed to the workspace's (local) DVC remote
    assert any(p.is_file() for p in (env.root / ".aegis" / "dvc-remote").rglob("*"))
    assert _staging_empty(env.root)


def test_cli_ingest_from_s3(env, s3, bucket, cli):
    _upload(s3, bucket, "pre/", env.dataset)
    res = cli("--workspace", env.root, "ingest", f"s3://{bucket}/pre/", "--name", "digits")
    assert res.code == 0, res.err
    assert dataset_digest((env.dataset / MANIFEST_NAME).read_bytes()) in res.out
    assert _staging_empty(env.root)


def test_s3_prefix_is_a_folder_not_a_string_prefix(env, s3, bucket, cli):
    """``s3://b/pre`` covers ``pre/*`` only: siblings ``pre2/``, ``pre-x`` are not listed.

    A zero-byte "folder marker" object ``pre/`` is skipped.
    """
    _upload(s3, bucket, "pre/", env.dataset)
    s3.put_object(Bucket=bucket, Key="pre/", Body=b"")
    s3.put_object(Bucket=bucket, Key="pre2/evil.parquet", Body=b"evil")
    s3.put_object(Bucket=bucket, Key="pre-evil.parquet", Body=b"evil")
    res = cli("--workspace", env.root, "--json", "ingest", f"s3://{bucket}/pre", "--name", "digits")
    assert res.code == 0, res.err
    assert json.loads(res.out)["name"] == "digits"
    assert _files(env.root / "data" / "digits") == _files(env.dataset)


# -- refused (exit 1), workspace untouched ---------------------------------------------------


def _extra(key: str, body: bytes = b"PAR1 not really") -> Callable:
    def setup(s3, bucket, env):
        _upload(s3, bucket, "pre/", env.dataset)
        s3.put_object(Bucket=bucket, Key=key, Body=body)

    return setup


def _changed_byte(s3, bucket, env):
    _upload(s3, bucket, "pre/", env.dataset)
    data = bytearray((env.dataset / "digits.parquet").read_bytes())
    data[len(data) // 2] ^= 0x01
    s3.put_object(Bucket=bucket, Key="pre/digits.parquet", Body=bytes(data))


def _missing_manifest(s3, bucket, env):
    _upload(s3, bucket, "pre/", env.dataset)
    s3.delete_object(Bucket=bucket, Key="pre/manifest.json")


def _over_size_limit(s3, bucket, env):
    size = (env.dataset / "digits.parquet").stat().st_size
    others = max(p.stat().st_size for p in env.dataset.iterdir() if p.name != "digits.parquet")
    assert others < size - 1
    _set_params(env.root, max_file_bytes=size - 1)
    _upload(s3, bucket, "pre/", env.dataset)


REFUSALS = {
    "key-with-dotdot": (_extra("pre/../evil.parquet"), "path"),
    "key-with-dot": (_extra("pre/./x"), "path"),
    "key-is-dotdot": (_extra("pre/.."), "path"),
    "key-with-empty-segment": (_extra("pre//x.parquet"), "path"),
    "key-with-backslash": (_extra("pre/a\\b.parquet"), "path"),
    "key-below-subfolder": (_extra("pre/sub/x.parquet"), "file-set"),
    "extra-object": (_extra("pre/extra.parquet"), "file-set"),
    "missing-object": (_missing_manifest, "file-set"),
    "changed-byte": (_changed_byte, "integrity"),
    "object-over-size-limit": (_over_size_limit, "size-limit"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_s3_ingest_refusals(case, env, s3, bucket, cli):
    setup, check = REFUSALS[case]
    setup(s3, bucket, env)
    before = snapshot(env.root)

    res = cli("--workspace", env.root, "ingest", f"s3://{bucket}/pre", "--name", "digits")

    assert res.code == 1, (res.out, res.err)
    assert f"refused: {check}:" in res.err
    assert len(res.err.strip().splitlines()) == 1
    assert "Traceback" not in res.err
    assert snapshot(env.root) == before
    assert _staging_empty(env.root)
    assert not (env.root / "data" / "digits").exists()


def test_size_limit_applies_to_listed_size_before_download(env, s3, bucket):
    """The listed size is checked first; a refusal stages nothing at all."""
    _over_size_limit(s3, bucket, env)
    from aegis.data.sources import stage_source
    from aegis.errors import RefusedError

    staging = env.root / ".aegis" / "staging" / "t"
    staging.mkdir(parents=True)
    with pytest.raises(RefusedError) as exc:
        stage_source(f"s3://{bucket}/pre", staging, env.ws.params().ingest)
    assert exc.value.check == "size-limit"
    assert "digits.parquet" in str(exc.value)
    # dataset.sig sorts before digits.parquet and was copied; nothing of digits.parquet was
    assert sorted(p.name for p in staging.iterdir()) == ["dataset.sig"]


# -- usage errors (exit 2) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://aegis-no-such-bucket-{uid}/pre", "NoSuchBucket"),
        ("s3://{bucket}/empty", "no objects under this prefix"),
        ("s3://{bucket}", "no objects under this prefix"),
        ("s3://", "expected s3://bucket/prefix"),
    ],
    ids=["nonexistent-bucket", "empty-prefix", "empty-bucket", "malformed-url"],
)
def test_s3_usage_errors(url, message, env, s3, bucket, cli, request):
    if request.node.callspec.id == "empty-prefix":
        _upload(s3, bucket, "elsewhere/", env.dataset)
    before = snapshot(env.root)
    source = url.format(bucket=bucket, uid=uuid.uuid4().hex[:8])
    res = cli("--workspace", env.root, "ingest", source, "--name", "digits")
    assert res.code == 2, (res.out, res.err)
    assert message in res.err
    assert len(res.err.strip().splitlines()) == 1
    assert snapshot(env.root) == before
    assert _staging_empty(env.root)


# -- the S3 DVC remote ----------------------------------------------------------------------------


@pytest.mark.slow
def test_s3_dvc_remote_restores_old_version_byte_for_byte(env, s3, bucket, tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    ws, created = init_workspace(
        tmp_path / "ws3", admin_key_out=keys / "admin.pem", remote=f"s3://{bucket}/dvcstore"
    )
    assert f"DVC remote s3://{bucket}/dvcstore" in created
    assert not ws.local_remote.exists()
    supplier = keys / "supplier.pem"
    new_key(
        ws, role="supplier", name="acme", owner="acme-data", out=supplier,
        admin_key=keys / "admin.pem",
    )  # fmt: skip
    actor, _ = Ledger.load(ws).actor(None)

    v1 = tmp_path / "v1"
    publish_dataset(env.raw, name="digits", key_path=supplier, out=v1)
    first = ingest(Ledger.load(ws), str(v1), name="digits", actor=actor)

    # version 2: different rows, published later
    import pyarrow.parquet as pq

    raw2 = tmp_path / "raw2"
    raw2.mkdir()
    table = pq.read_table(env.raw / "digits.parquet")
    pq.write_table(table.slice(0, 1000), raw2 / "digits.parquet")
    v2 = tmp_path / "v2"
    publish_dataset(raw2, name="digits", key_path=supplier, out=v2)
    second = ingest(Ledger.load(ws), str(v2), name="digits", actor=actor)
    assert second.created > first.created
    assert second.commit != first.commit
    assert _files(v1)["digits.parquet"] != _files(v2)["digits.parquet"]
    assert _files(ws.root / "data" / "digits") == _files(v2)

    stored = s3.list_objects_v2(Bucket=bucket, Prefix="dvcstore/").get("KeyCount", 0)
    assert stored >= 2 * 3  # each version's files (+ the directory listing) are on S3

    shutil.rmtree(ws.root / ".dvc" / "cache")
    shutil.rmtree(ws.root / "data" / "digits")
    vcs.git(ws.root, "checkout", first.commit, "--", "data/digits.dvc")
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "pull", "-q", "data/digits.dvc"],
        cwd=ws.root,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr

    assert _files(ws.root / "data" / "digits") == _files(v1)
