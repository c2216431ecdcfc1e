"""Weights at rest: server-side encryption asked on every DVC push and checked after it.

Mirrors aegis/storage.py against the session's S3 endpoint (moto_server, which
records SSE headers and returns them on head_object), and its config in aegis/config.py.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
import yaml

from aegis import storage, vcs
from aegis.config import override_params, parse_params
from aegis.data.ingest import ingest
from aegis.errors import ConfigError, RefusedError

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def s3(s3_endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint)


@pytest.fixture
def bucket(s3) -> str:
    name = f"aegis-sse-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def kms_key(s3_endpoint) -> str:
    import boto3

    return boto3.client("kms", endpoint_url=s3_endpoint).create_key()["KeyMetadata"]["KeyId"]


def _on_s3(env, bucket: str, prefix: str = "dvc") -> None:
    """Points the DVC remote at ``s3://bucket/prefix``: ``dvc remote add -d -f storage URL``
    (the README's way for an existing workspace), done in-process to save a DVC start."""
    from dvc.config import Config

    with Config(dvc_dir=str(env.root / ".dvc")).edit("repo") as conf:
        conf["remote"]["storage"] = {"url": f"s3://{bucket}/{prefix}"}
        conf["core"]["remote"] = "storage"


def _storage(env, **values) -> None:
    override_params(env.root / "params.yaml", {"storage": values})
    vcs.commit_paths(env.root, "test: storage params", ["params.yaml"])


def _tracked_dir(env, *names: str, files: int = 3) -> str:
    """Small directories ``models/NAME`` tracked with one ``dvc add``; returns the first's .dvc."""
    names = names or ("x",)
    for name in names:
        directory = env.root / "models" / name
        directory.mkdir(parents=True)
        for i in range(files):
            (directory / f"w{i}.bin").write_bytes(f"{name}-{i}".encode() * 100)
    vcs.dvc(env.root, "add", "-q", *(f"models/{name}" for name in names))
    return f"models/{names[0]}.dvc"


def _objects(s3, bucket: str, prefix: str = "dvc/") -> dict[str, dict]:
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    return {key: s3.head_object(Bucket=bucket, Key=key) for key in keys}


def _strip_sse(s3, bucket: str, key: str) -> None:
    """What an endpoint (or a proxy) that ignores SSE stores: the same bytes, unencrypted."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=body)


# -- params ----------------------------------------------------------------------------------


def test_storage_defaults_and_the_template() -> None:
    assert parse_params({}).storage.sse == "AES256"
    assert parse_params({}).storage.kms_key_id is None
    template = parse_params({"storage": {"sse": "aws:kms", "kms_key_id": "alias/aegis"}})
    assert template.storage.kms_key_id == "alias/aegis"
    text = (REPO / "params.yaml").read_text()
    assert re.search(r"^storage:.*\n  sse: AES256 .*\n  kms_key_id: null ", text, re.M)


@pytest.mark.parametrize(
    ("storage_params", "fragment"),
    [
        ({"sse": "aws:kms"}, "storage: kms_key_id is required with sse: aws:kms"),
        ({"sse": "AES256", "kms_key_id": "k1"}, "kms_key_id is set but sse is AES256"),
        ({"kms_key_id": "k1"}, "kms_key_id is set but sse is AES256"),
        ({"sse": "off", "kms_key_id": "k1"}, "kms_key_id is set but sse is off"),
        ({"sse": "aws:kms", "kms_key_id": "k 1"}, "storage.kms_key_id"),
        ({"sse": "aes256"}, "storage.sse: Input should be 'off', 'AES256' or 'aws:kms'"),
    ],
    ids=[
        "kms-without-key",
        "key-with-aes256",
        "key-with-default",
        "key-with-off",
        "bad-key",
        "case",
    ],
)
def test_malformed_storage_params_are_config_errors(storage_params, fragment) -> None:
    with pytest.raises(ConfigError) as info:
        parse_params({"storage": storage_params})
    assert fragment in str(info.value)


def test_malformed_storage_params_stop_a_push_with_exit_2(env, s3, bucket, cli) -> None:
    _on_s3(env, bucket)
    path = env.root / "params.yaml"
    data = yaml.safe_load(path.read_text())
    data["storage"] = {"sse": "aws:kms"}  # written by hand: override_params would refuse it
    path.write_text(yaml.safe_dump(data))
    res = cli("--workspace", env.root, "ingest", env.dataset, "--name", "digits")
    assert res.code == 2, (res.out, res.err)
    assert "params.yaml: storage: kms_key_id is required with sse: aws:kms" in res.err
    assert len(res.err.strip().splitlines()) == 1
    assert not _objects(s3, bucket)
    with pytest.raises(ConfigError, match="kms_key_id is required"):
        storage.push(env.ws, "data/digits.dvc")


# -- pushes to S3 are encrypted and checked ------------------------------------------------------


def test_ingest_to_an_s3_remote_is_stored_with_aes256(env, s3, bucket) -> None:
    _on_s3(env, bucket)
    actor, _ = env.ledger().actor(None)
    ingest(env.ledger(), str(env.dataset), name="digits", actor=actor)

    stored = _objects(s3, bucket)
    pushed = storage.pushed_objects(env.ws, "data/digits.dvc")
    assert sorted(stored) == ["dvc/" + key for key in pushed]  # the .dir and every file
    assert any(key.endswith(".dir") for key in pushed) and len(pushed) >= 3
    assert {h.get("ServerSideEncryption") for h in stored.values()} == {"AES256"}
    local = (env.root / ".dvc" / "config.local").read_text()
    assert 'remote "storage"' in local and "sse = AES256" in local
    assert "sse =" not in (env.root / ".dvc" / "config").read_text()  # the tracked one untouched
    assert storage.check_sse(env.ws, "data/digits.dvc") == len(pushed)


def test_aws_kms_push_names_the_key_and_another_key_is_refused(env, s3, bucket, kms_key) -> None:
    _on_s3(env, bucket)
    _storage(env, sse="aws:kms", kms_key_id=kms_key)
    target = _tracked_dir(env)

    storage.push(env.ws, target)

    stored = _objects(s3, bucket)
    assert len(stored) == 4  # .dir + 3 files
    assert {h.get("ServerSideEncryption") for h in stored.values()} == {"aws:kms"}
    assert {h.get("SSEKMSKeyId") for h in stored.values()} == {kms_key}
    # asking for the same key by its ARN or an alias is the same key (KMS resolves it)
    import boto3

    kms = boto3.client("kms")
    arn = kms.describe_key(KeyId=kms_key)["KeyMetadata"]["Arn"]
    alias = f"alias/aegis-{uuid.uuid4().hex[:8]}"
    kms.create_alias(AliasName=alias, TargetKeyId=kms_key)
    for same in (arn, alias):
        params = parse_params({"storage": {"sse": "aws:kms", "kms_key_id": same}}).storage
        assert storage.check_sse(env.ws, target, params=params) == 4

    # ... and objects under another algorithm or another key are refused
    aes = parse_params({"storage": {"sse": "AES256"}}).storage
    with pytest.raises(RefusedError, match=r"is stored with aws:kms; storage\.sse asks AES256"):
        storage.check_sse(env.ws, target, params=aes)
    other = parse_params({"storage": {"sse": "aws:kms", "kms_key_id": "other-key"}}).storage
    with pytest.raises(RefusedError) as info:
        storage.check_sse(env.ws, target, params=other)
    assert info.value.check == "sse"
    assert f"is encrypted with KMS key {kms_key}; storage.kms_key_id asks other-key" in str(
        info.value
    )


def test_a_push_to_a_local_remote_is_unaffected(env) -> None:
    _storage(env, sse="aws:kms", kms_key_id="alias/never-used")
    target = _tracked_dir(env)

    storage.push(env.ws, target)

    assert any(p.is_file() for p in env.ws.local_remote.rglob("*"))
    assert not (env.root / ".dvc" / "config.local").exists()
    assert storage.check_sse(env.ws, target) == 0


def test_off_neither_asks_nor_checks(env, s3, bucket) -> None:
    _on_s3(env, bucket)
    target = _tracked_dir(env, "x", "y")
    storage.push(env.ws, target)  # AES256 written to config.local
    _storage(env, sse="off")
    second = "models/y.dvc"

    storage.push(env.ws, second)

    assert "sse" not in (env.root / ".dvc" / "config.local").read_text()
    new = [h for h in _objects(s3, bucket).values() if "ServerSideEncryption" not in h]
    assert len(new) == 4  # y's objects, stored as the bucket's default leaves them
    assert storage.check_sse(env.ws, second) == 0


# -- refusals ------------------------------------------------------------------------------------


def test_an_object_stored_unencrypted_or_missing_is_refused(env, s3, bucket) -> None:
    _on_s3(env, bucket)
    target = _tracked_dir(env)
    storage.push(env.ws, target)
    key = "dvc/" + storage.pushed_objects(env.ws, target)[-1]
    _strip_sse(s3, bucket, key)

    with pytest.raises(RefusedError) as info:
        storage.check_sse(env.ws, target)

    assert info.value.check == "sse"
    message = str(info.value)
    assert message.startswith(f"sse: s3://{bucket}/{key} is stored unencrypted; ")
    assert "storage.sse asks AES256" in message and "\n" not in message
    assert (env.root / "models" / "x").is_dir()  # nothing local is touched

    first = "dvc/" + storage.pushed_objects(env.ws, target)[0]
    s3.delete_object(Bucket=bucket, Key=first)  # and one the push should have written is gone
    with pytest.raises(RefusedError) as info:
        storage.check_sse(env.ws, target)
    assert str(info.value).startswith(
        f"sse: s3://{bucket}/{first} is not on the remote after the push (and 1 more of its 4 "
    )


def test_objects_pushed_before_sse_was_on_refuse_the_push_with_exit_1(
    env, template_env, tmp_path, s3, bucket, cli
) -> None:
    """DVC does not upload an object the remote already holds: an earlier unencrypted copy
    (SSE off, or an endpoint that dropped it) makes the push's objects unencrypted."""
    from helpers import copy_env

    earlier = copy_env(template_env.root.parent, tmp_path / "earlier")
    _on_s3(earlier, bucket)
    _storage(earlier, sse="off")
    actor, _ = earlier.ledger().actor(None)
    ingest(earlier.ledger(), str(earlier.dataset), name="digits", actor=actor)
    _on_s3(env, bucket)

    res = cli("--workspace", env.root, "ingest", env.dataset, "--name", "digits")

    assert res.code == 1, (res.out, res.err)
    line = res.err.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert re.search(rf"refused: sse: s3://{bucket}/dvc/files/md5/\S+ is stored unencrypted", line)
    assert "more of its" in line  # every object of the dataset, the first named
    # what was stored locally stays: the dataset, its .dvc file, the commit and audit entry
    assert (env.root / "data" / "digits.dvc").is_file()
    assert vcs.committed_bytes(env.root, "data/digits.dvc") is not None
    assert any(e.action == "ingest.accepted" for e in env.ws.audit().entries())


# -- the DVC config follows the params -----------------------------------------------------------


def test_config_local_is_rewritten_from_params_before_each_push(env, s3, bucket) -> None:
    _on_s3(env, bucket)
    local = env.root / ".dvc" / "config.local"
    local.write_text("[core]\n    autostage = false\n['remote \"storage\"']\n    sse = off-ish\n")
    remote = storage.default_remote(env.ws)
    assert remote is not None and remote.is_s3

    storage.ask_sse(env.ws, remote, env.ws.params().storage)

    text = local.read_text()
    assert "sse = AES256" in text and "off-ish" not in text and "autostage = false" in text
    before = local.stat()
    storage.ask_sse(env.ws, storage.default_remote(env.ws), env.ws.params().storage)
    after = local.stat()  # a write replaces the file (atomic_write): a new inode
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_contradicting_key_in_the_tracked_dvc_config_is_a_config_error(env, s3, bucket) -> None:
    _on_s3(env, bucket)
    vcs.dvc(env.root, "remote", "modify", "storage", "sse_kms_key_id", "some-key")
    target = _tracked_dir(env)
    with pytest.raises(ConfigError, match=r"sets sse_kms_key_id in \.dvc/config"):
        storage.push(env.ws, target)
    assert not _objects(s3, bucket)


def test_a_stage_push_covers_its_cached_outputs_only(env) -> None:
    """``cache: false`` metrics are never pushed, so never checked; a directory output is."""
    digest = "0" * 32
    (env.root / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  validate@digits:\n    cmd: aegis stage validate --name digits\n"
        "    outs:\n"
        f"    - path: quarantine/digits.parquet\n      hash: md5\n      md5: {'a' * 32}\n"
        f"    - path: validation/digits/report.html\n      hash: md5\n      md5: {'b' * 32}\n"
        f"    - path: validation/digits/result.json\n      hash: md5\n      md5: {'c' * 32}\n"
    )
    assert storage.pushed_objects(env.ws, "validate@digits") == [
        f"files/md5/aa/{'a' * 30}",
        f"files/md5/bb/{'b' * 30}",
    ]
    listing = env.root / ".dvc" / "cache" / "files" / "md5" / "dd" / f"{'d' * 30}.dir"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text(json.dumps([{"md5": digest, "relpath": "model.safetensors"}]))
    (env.root / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  train@digits:\n    cmd: aegis stage train --name digits\n"
        f"    outs:\n    - path: models/digits\n      hash: md5\n      md5: {'d' * 32}.dir\n"
    )
    assert storage.pushed_objects(env.ws, "train@digits") == [
        f"files/md5/00/{'0' * 30}",
        f"files/md5/dd/{'d' * 30}.dir",
    ]


def test_every_push_goes_through_storage(env, monkeypatch) -> None:
    """The three pushes call the one place that asks and checks SSE; no other `dvc push`."""
    from aegis.data import ingest as ingest_core
    from aegis.pipeline.stages import push_stage
    from aegis.registry.release import push_release

    pushed: list[str] = []
    monkeypatch.setattr(storage, "push", lambda ws, target: pushed.append(target))
    ingest_core.push(env.ws, "digits")
    push_stage(env.ws, "train@digits")
    push_release(env.ws, type("R", (), {"directory": "releases/m/v1"})())
    assert pushed == ["data/digits.dvc", "train@digits", "releases/m/v1.dvc"]

    offenders = [
        str(path.relative_to(REPO))
        for top in ("aegis", "tasks", "flows")
        for path in (REPO / top).rglob("*.py")
        if path.name != "storage.py" and re.search(r"""dvc\([^)]*["']push["']""", path.read_text())
    ]
    assert offenders == []
