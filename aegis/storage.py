"""Weights at rest: the DVC remote's server-side encryption, asked on every push, checked after.

The one place Aegis pushes to the DVC remote (:func:`push`; ingest, the stages and
releases call it). When the remote is ``s3://`` and ``storage.sse`` is not ``off``:

1. before the push, ``sse`` (and ``sse_kms_key_id``) of the remote are written to
   ``.dvc/config.local`` from the validated ``params.yaml``, the level that shadows
   every other DVC config file, so what DVC sends is what the params say, whatever a
   config file said before (a key another level sets that would contradict them is
   refused instead);
2. after the push, every object the push stands for (each output's cache object and,
   for a directory, its ``.dir`` listing and every file it lists) is asked for with
   ``head_object``: an object stored unencrypted, with another algorithm or another
   KMS key, or missing, refuses the push (``sse``, exit 1). What was stored locally
   (the commit, the audit entry, the DVC cache) stays; a push can be repeated.

A local-directory remote is left alone: SSE is a property of an S3 bucket.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aegis import vcs
from aegis.config import StorageParams, read_config_yaml
from aegis.errors import ConfigError, RefusedError
from aegis.fileutil import atomic_write, read_optional, read_regular
from aegis.s3 import parse_s3_url, s3_client, s3_errors
from aegis.workspace import Workspace
from aegis.yamlio import YamlRefused, load_yaml

_MD5 = re.compile(r"^[0-9a-f]{32}(\.dir)?$")
_REMOTE_SECTION = re.compile(r'^\s*remote\s*"(.*)"\s*$', re.I)
_DVC_FILE_LIMIT = 16 * 1024**2  # a .dvc file, dvc.lock or a .dir listing of 1M files fits
_HEAD_WORKERS = 16
# Keys of the remote's section in .dvc/config.local that Aegis owns (written from params).
_OWNED = ("sse", "sse_kms_key_id")
# Keys that would contradict the params if another config level set them.
_CONFLICTING = ("sse_customer_key", "sse_customer_algorithm")


@dataclass(frozen=True)
class DvcRemote:
    """The workspace's default DVC remote as DVC's merged config sees it."""

    name: str
    url: str
    config: dict[str, Any]  # its merged section (every level)

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")


def _dvc_config(ws: Workspace):
    from dvc.config import Config
    from dvc.config import ConfigError as DvcConfigError

    try:
        return Config(dvc_dir=str(ws.root / ".dvc"))
    except DvcConfigError as exc:
        raise ConfigError(f"DVC config: {exc}") from None


def default_remote(ws: Workspace) -> DvcRemote | None:
    """The remote ``dvc push`` uses (``core.remote``), or None when there is none."""
    config = _dvc_config(ws)
    name = config["core"].get("remote")
    section = config["remote"].get(name) if name else None
    if not name or not section or not section.get("url"):
        return None
    return DvcRemote(name=name, url=str(section["url"]), config=dict(section))


def wanted(params: StorageParams) -> dict[str, str]:
    """The remote config keys Aegis writes for ``params`` (empty for ``off``)."""
    if params.sse == "off":
        return {}
    if params.sse == "aws:kms":
        assert params.kms_key_id is not None  # the params model requires it
        return {"sse": "aws:kms", "sse_kms_key_id": params.kms_key_id}
    return {"sse": params.sse}


def ask_sse(ws: Workspace, remote: DvcRemote, params: StorageParams) -> None:
    """Writes the remote's ``sse`` keys into ``.dvc/config.local`` from ``params``.

    Written only when they differ (atomically, never through a symlink), then read
    back through DVC's own config loader. ``off`` removes Aegis's keys from the local
    level (what the other levels say then applies, and nothing is checked).

    Raises:
        ConfigError: Another config level sets a key that contradicts the params
            (an SSE-C key, or a KMS key with ``sse: AES256``), or DVC reads back
            something else than was written.
    """
    want = wanted(params)
    config = _dvc_config(ws)
    if want:
        others = config.load_config_to_level("local")["remote"].get(remote.name, {})
        clash = [k for k in _CONFLICTING if others.get(k)]
        if "sse_kms_key_id" not in want and others.get("sse_kms_key_id"):
            clash.append("sse_kms_key_id")
        if clash:
            raise ConfigError(
                f"DVC remote '{remote.name}' sets {clash[0]} in .dvc/config (or a global DVC "
                f"config), which contradicts storage.sse: {params.sse} in params.yaml; "
                "remove it there (Aegis sets the remote's encryption from params)"
            )
    local = config.read("local")["remote"].get(remote.name, {})
    if {k: local[k] for k in _OWNED if k in local} == want:
        return
    _write_local(ws, remote.name, want)
    merged = _dvc_config(ws)["remote"].get(remote.name, {})
    if any(merged.get(k) != v for k, v in want.items()):
        raise ConfigError(f".dvc/config.local: DVC does not read back {want} for '{remote.name}'")


def _write_local(ws: Workspace, name: str, want: dict[str, str]) -> None:
    from configobj import ConfigObj, ConfigObjError

    path = ws.root / ".dvc" / "config.local"
    raw = read_optional(path, what=".dvc/config.local") or b""
    try:
        conf = ConfigObj(raw.decode("utf-8").splitlines())
    except (ConfigObjError, UnicodeDecodeError) as exc:
        raise ConfigError(f".dvc/config.local: not a DVC config file ({exc})") from None
    section = next(
        (s for s in conf if (m := _REMOTE_SECTION.match(s)) and m.group(1).lower() == name.lower()),
        f'remote "{name}"',
    )
    values = conf.setdefault(section, {})
    for key in _OWNED:
        values.pop(key, None)
    values.update(want)
    if not values:
        del conf[section]
    conf.filename = None
    atomic_write(path, ("\n".join(conf.write()) + "\n").encode("utf-8"), mode=0o600)


def push(ws: Workspace, target: str) -> None:
    """``dvc push TARGET`` (a ``.dvc`` file or a stage address) with SSE asked and checked.

    Raises:
        TransientIOError: The push, or S3 during the check, failed (callers retry).
        RefusedError: ``sse``: an object of the push is not stored as params ask.
        ConfigError: The DVC config contradicts the params (see :func:`ask_sse`).
    """
    params = ws.params().storage
    remote = default_remote(ws)
    sealed = remote is not None and remote.is_s3
    if sealed:
        assert remote is not None
        ask_sse(ws, remote, params)
    vcs.dvc(ws.root, "push", "-q", *(["-r", remote.name] if remote else []), target, io=True)
    if sealed and params.sse != "off":
        assert remote is not None
        check_sse(ws, target, remote=remote, params=params)


# -- which objects a push stands for ----------------------------------------------------------


def _yaml(path: Path, what: str) -> Any:
    try:
        return load_yaml(read_regular(path, limit=_DVC_FILE_LIMIT, what=what).decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what}: not found (nothing to check the push against)") from None
    except (YamlRefused, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what}: not a DVC file ({exc})") from None


def _uncached(ws: Workspace, stage: str) -> set[str]:
    """Outputs of a ``dvc.yaml`` stage declared ``cache: false`` (DVC pushes none of them)."""
    base, _, item = stage.partition("@")
    stages = read_config_yaml(ws.root / "dvc.yaml")
    spec = (stages or {}).get("stages", {}).get(base) if isinstance(stages, dict) else None
    if isinstance(spec, dict) and isinstance(spec.get("do"), dict):
        spec = spec["do"]
    found: set[str] = set()
    for kind in ("outs", "metrics", "plots"):
        entries = spec.get(kind) if isinstance(spec, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            for path, options in entry.items():
                if isinstance(options, dict) and options.get("cache") is False:
                    found.add(str(path).replace("${item}", item).replace("${key}", item))
    return found


def _outputs(ws: Workspace, target: str) -> list[dict[str, Any]]:
    """The cached outputs of ``target``: a ``.dvc`` file's ``outs``, or a stage's in dvc.lock."""
    if target.endswith(".dvc"):
        data = _yaml(ws.root / target, target)
        outs = data.get("outs") if isinstance(data, dict) else None
        skip: set[str] = set()
    else:
        lock = _yaml(ws.root / "dvc.lock", "dvc.lock")
        stages = lock.get("stages") if isinstance(lock, dict) else None
        entry = stages.get(target) if isinstance(stages, dict) else None
        if not isinstance(entry, dict):
            raise ConfigError(f"dvc.lock: has no stage '{target}' (nothing to check the push)")
        outs, skip = entry.get("outs"), _uncached(ws, target)
    if not isinstance(outs, list):
        raise ConfigError(f"{target}: has no outputs (nothing to check the push against)")
    return [
        out
        for out in outs
        if isinstance(out, dict) and out.get("cache") is not False and out.get("path") not in skip
    ]


def _cache_dir(ws: Workspace) -> Path:
    configured = _dvc_config(ws)["cache"].get("dir")
    if not configured:
        return ws.root / ".dvc" / "cache"
    path = Path(str(configured))
    return path if path.is_absolute() else ws.root / ".dvc" / path


def _object_key(md5: str, legacy: bool) -> str:
    if not _MD5.match(md5):
        raise ConfigError(f"DVC hash {md5[:40]!r} is not an md5 (nothing to check the push)")
    return f"{md5[:2]}/{md5[2:]}" if legacy else f"files/md5/{md5[:2]}/{md5[2:]}"


def pushed_objects(ws: Workspace, target: str) -> list[str]:
    """Remote-relative keys of every object ``dvc push TARGET`` makes sure the remote holds.

    DVC 3's layout (``files/md5/xx/yyyy``; outputs without ``hash: md5`` use DVC 2's
    ``xx/yyyy``): each output's object and, for a directory, its ``.dir`` listing (read
    from the local cache) and every file it lists.
    """
    keys: set[str] = set()
    cache: Path | None = None
    for out in _outputs(ws, target):
        md5 = str(out.get("md5", ""))
        legacy = out.get("hash") != "md5"
        key = _object_key(md5, legacy)
        keys.add(key)
        if not md5.endswith(".dir"):
            continue
        cache = cache or _cache_dir(ws)
        listing = cache / key
        try:
            entries = _json_list(read_regular(listing, limit=_DVC_FILE_LIMIT, what=str(listing)))
        except FileNotFoundError:
            raise ConfigError(
                f"{out.get('path')}: its directory listing {md5} is not in the DVC cache"
            ) from None
        keys.update(_object_key(str(e.get("md5", "")), legacy) for e in entries)
    return sorted(keys)


def _json_list(data: bytes) -> list[dict[str, Any]]:
    import json

    try:
        entries = json.loads(data)
    except ValueError:
        entries = None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError("a DVC directory listing in the cache is not a JSON list")
    return entries


# -- what S3 holds -----------------------------------------------------------------------------


def _head(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def _kms_ids(key_id: str) -> set[str]:
    """The key's id and ARN as KMS names them (an alias resolved), or nothing if not allowed."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        meta = boto3.client("kms").describe_key(KeyId=key_id)["KeyMetadata"]
    except (BotoCoreError, ClientError):
        return set()
    return {str(meta.get("KeyId")), str(meta.get("Arn"))}


def _what_is_wrong(head: dict[str, Any] | None, params: StorageParams, kms: list[set[str]]) -> str:
    """Empty when ``head`` is stored as ``params`` ask, else what it has instead."""
    if head is None:
        return "is not on the remote after the push"
    algorithm = head.get("ServerSideEncryption")
    if algorithm != params.sse:
        has = f"with {algorithm}" if algorithm else "unencrypted"
        return f"is stored {has}; storage.sse asks {params.sse}"
    if params.sse != "aws:kms":
        return ""
    got, want = str(head.get("SSEKMSKeyId") or ""), str(params.kms_key_id)
    if got == want or got.endswith(f":key/{want}"):
        return ""
    if not kms:
        kms.append(_kms_ids(want))
    if got and got in kms[0]:
        return ""
    return f"is encrypted with KMS key {got or '(none named)'}; storage.kms_key_id asks {want}"


def check_sse(
    ws: Workspace,
    target: str,
    *,
    remote: DvcRemote | None = None,
    params: StorageParams | None = None,
) -> int:
    """Heads every object of ``target``'s push; returns how many were checked.

    Raises:
        RefusedError: ``sse``: an object is missing, unencrypted, or encrypted with
            another algorithm or KMS key than ``storage`` asks (the first is named).
        TransientIOError, UsageError: S3 could not be asked.
    """
    all_params = ws.params()
    params = params or all_params.storage
    remote = remote or default_remote(ws)
    if remote is None or not remote.is_s3 or params.sse == "off":
        return 0
    bucket, prefix = parse_s3_url(remote.url, what=f"DVC remote '{remote.name}'")
    keys = [prefix + key for key in pushed_objects(ws, target)]
    retries = all_params.ingest.io_retries
    workers = max(1, min(_HEAD_WORKERS, len(keys)))
    client = s3_client(
        retries,
        endpoint_url=remote.config.get("endpointurl"),
        region=remote.config.get("region"),
        max_pool_connections=workers,
    )
    with s3_errors(remote.url, doing="checking the encryption of"):
        heads = _heads(client, bucket, keys, workers)
    kms: list[set[str]] = []  # resolved once, on the first key id that is not literally ours
    wrong = [
        (key, why)
        for key, head in zip(keys, heads, strict=True)
        if (why := _what_is_wrong(head, params, kms))
    ]
    if wrong:
        key, why = wrong[0]
        more = f" (and {len(wrong) - 1} more of its {len(keys)} objects)" if len(wrong) > 1 else ""
        raise RefusedError(
            "sse",
            f"s3://{bucket}/{key} {why}{more}; the push of {target} is refused (what is stored "
            "locally is kept: fix the bucket or endpoint, re-encrypt the objects, push again)",
        )
    return len(keys)


def _heads(client: Any, bucket: str, keys: Iterable[str], workers: int) -> list:
    keys = list(keys)
    if workers == 1:
        return [_head(client, bucket, key) for key in keys]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aegis-sse") as pool:
        return list(pool.map(lambda key: _head(client, bucket, key), keys))
