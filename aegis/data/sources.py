"""Copying a dataset from its source (a directory or S3) into staging.

Staging refuses what can never be a valid flat dataset before a byte is
hashed: symbolic links, subdirectories, special files, keys that escape the
prefix, too many or too large files. The copy is bounded by the size limit
even if a file grows while it is read. Verification then runs on the staged
copy, so what was verified is exactly what gets stored.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from aegis.config import IngestParams
from aegis.errors import RefusedError, UsageError
from aegis.s3 import parse_s3_url, s3_client, s3_errors

__all__ = ["StagedSource", "check_file_name", "parse_s3_url", "s3_client", "s3_errors",
           "stage_source"]  # fmt: skip

_CHUNK = 1 << 20


@dataclass(frozen=True)
class StagedSource:
    """Files copied into the staging directory."""

    source: str
    directory: Path
    files: int
    bytes: int


def stage_source(source: str, staging: Path, params: IngestParams) -> StagedSource:
    """Copies ``source`` (directory or ``s3://bucket/prefix``) into ``staging``.

    ``staging`` must exist and be empty; the caller removes it on refusal.

    Raises:
        UsageError: The source is missing or empty.
        RefusedError: ``symlink``, ``path``, ``file-set`` or ``size-limit``.
        TransientIOError: S3 could not be reached (worth a retry).
    """
    if source.startswith("s3://"):
        total = _stage_s3(source, staging, params)
    else:
        total = _stage_directory(Path(source), staging, params)
    count = len(os.listdir(staging))
    return StagedSource(source=source, directory=staging, files=count, bytes=total)


def check_file_name(name: str) -> None:
    """Refuses names that would leave the dataset directory or hide in it."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise RefusedError("path", f"file name {name!r} escapes the dataset directory")


def _check_size(name: str, size: int, params: IngestParams) -> None:
    if size > params.max_file_bytes:
        raise RefusedError(
            "size-limit",
            f"'{name}' is {size} bytes, over ingest.max_file_bytes ({params.max_file_bytes})",
        )


def _copy_bounded(reader, target: Path, name: str, params: IngestParams) -> int:
    written = 0
    with open(target, "xb") as out:
        while chunk := reader.read(_CHUNK):
            written += len(chunk)
            _check_size(name, written, params)
            out.write(chunk)
    return written


def _stage_directory(src: Path, staging: Path, params: IngestParams) -> int:
    if not src.exists():
        raise UsageError(f"source {src}: not found")
    if not src.is_dir():
        raise UsageError(f"source {src}: not a directory")
    entries = sorted(os.scandir(src), key=lambda e: e.name)
    if not entries:
        raise UsageError(f"source {src}: is empty")
    if len(entries) > params.max_files:
        raise RefusedError("size-limit", f"{len(entries)} files, over ingest.max_files")
    total = 0
    for entry in entries:
        check_file_name(entry.name)
        info = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(info.st_mode):
            raise RefusedError("symlink", f"'{entry.name}' is a symbolic link")
        if stat.S_ISDIR(info.st_mode):
            raise RefusedError(
                "file-set", f"unexpected subdirectory '{entry.name}' (a dataset is flat)"
            )
        if not stat.S_ISREG(info.st_mode):
            raise RefusedError("file-set", f"'{entry.name}' is not a regular file")
        _check_size(entry.name, info.st_size, params)
        # O_NOFOLLOW: a file swapped for a symlink after the scan is refused too.
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            raise RefusedError(
                "symlink", f"'{entry.name}' changed into a link while read"
            ) from None
        with os.fdopen(fd, "rb") as reader:
            total += _copy_bounded(reader, staging / entry.name, entry.name, params)
    return total


def _stage_s3(url: str, staging: Path, params: IngestParams) -> int:
    bucket, prefix = parse_s3_url(url)
    client = s3_client(params.io_retries)
    with s3_errors(f"source {url}", doing="reading"):  # "source URL: NoSuchBucket"
        objects = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            objects.extend(page.get("Contents", []))
            if len(objects) > params.max_files:
                raise RefusedError(
                    "size-limit", f"more than ingest.max_files ({params.max_files}) objects"
                )
        if not objects:
            raise UsageError(f"source {url}: no objects under this prefix")
        total = 0
        for obj in sorted(objects, key=lambda o: o["Key"]):
            rel = obj["Key"][len(prefix) :]
            if rel == "" and obj["Key"].endswith("/"):
                continue  # a "folder" marker object
            if rel.split("/")[0] in ("..", ".") or rel.startswith("/") or "\\" in rel:
                raise RefusedError("path", f"S3 key '{obj['Key']}' escapes the prefix")
            if "/" in rel:
                raise RefusedError(
                    "file-set",
                    f"unexpected key below a subfolder: '{obj['Key']}' (a dataset is flat)",
                )
            check_file_name(rel)
            _check_size(rel, int(obj["Size"]), params)
            body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"]
            try:
                total += _copy_bounded(body, staging / rel, rel, params)
            finally:
                body.close()
        return total
