"""The audit log's copy off the machine: every entry also written to S3.

With ``audit.ship_to: s3://bucket/prefix`` in ``params.yaml``, every entry the
ledger appends is also written to ``<prefix><seq:012d>.json``: the entry's
exact line, newline included, so the objects in key order concatenate to
``log.jsonl``. An object is never written over (``If-None-Match: *``), and
in a bucket with Object Lock it is retained in COMPLIANCE mode for
``audit.retention_days``: until then nobody (the pipeline key's holder and
the bucket's owner included) can delete it or its version. Whoever later
rewrites, truncates or re-signs the local log (even with the pipeline key)
then disagrees with a copy they cannot change.

An append ships in two steps under the log's lock (:class:`Shipper`):

1. :meth:`Shipper.prepare`, before the local write: the remote must hold the
   local log's last entry with the same bytes and nothing after it. Entries
   after the remote's last one (never shipped, or shipped by an append that
   failed halfway) are shipped now, oldest first, so the remote catches up.
   A remote that holds an entry the local log lacks, or other bytes, means
   the local log was truncated or rewritten: refused (``audit-remote``). An
   unreachable endpoint or a missing bucket is refused (``audit-ship``)
   before anything changes locally.
2. :meth:`Shipper.ship`, after the local write: the new entry. If that fails,
   the entry stays in the local log (still verifiable) and the append is
   refused (``audit-ship``); :func:`verify_remote` reports it as unshipped
   and the next append ships it first.

Shipping always goes oldest first and stops at the first failure, so what
Aegis wrote remotely is a run of entries from the first one on: the
remote's last entry being equal to the local one proves (through the hash
chain) that the whole local log up to it is what was shipped.
:func:`verify_remote` (``aegis audit verify --remote``) still compares every
entry. Retention is set, never read back.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aegis.audit import VerifiedLog
from aegis.errors import RefusedError, TransientIOError, UsageError
from aegis.s3 import parse_s3_url, s3_client

SHIP_CHECK = "audit-ship"
REMOTE_CHECK = "audit-remote"
LOCK_MODE = "COMPLIANCE"
# The pre-flight lists the keys from the local log's last entry on; a few more than the two
# it needs, so a stray object between two entries' keys cannot hide the next entry.
_PROBE_KEYS = 10

# Whether a bucket has Object Lock, per endpoint and bucket: asked once per process.
_OBJECT_LOCK: dict[tuple[str, str], bool] = {}


def entry_key(*, prefix: str, seq: int) -> str:
    """The object key of entry ``seq`` under ``prefix`` (``<prefix><seq:012d>.json``)."""
    return f"{prefix}{seq:012d}.json"


def split_url(url: str) -> tuple[str, str]:
    """Splits ``audit.ship_to`` into bucket and prefix (see :func:`aegis.s3.parse_s3_url`)."""
    return parse_s3_url(url, what="audit.ship_to")


def make_client() -> Any:
    """An S3 client with bounded timeouts and three attempts.

    The ledger ships while it holds the log's lock, so a dead endpoint must
    fail within a minute, not hang.
    """
    return s3_client(2, connect_timeout=5, read_timeout=15)


def object_lock_enabled(*, client: Any, bucket: str) -> bool:
    """Whether ``bucket`` has Object Lock enabled (asked once per process per bucket).

    Raises:
        botocore.exceptions.ClientError: Any answer but "no Object Lock configuration"
            (a missing bucket, no permission): retention is never silently dropped.
        botocore.exceptions.BotoCoreError: The endpoint is unreachable.
    """
    from botocore.exceptions import ClientError

    cache_key = (str(client.meta.endpoint_url), bucket)
    if cache_key not in _OBJECT_LOCK:
        try:
            answer = client.get_object_lock_configuration(Bucket=bucket)
            enabled = answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
            _OBJECT_LOCK[cache_key] = enabled == "Enabled"
        except ClientError as exc:
            if _code(exc) != "ObjectLockConfigurationNotFoundError":
                raise
            _OBJECT_LOCK[cache_key] = False
    return _OBJECT_LOCK[cache_key]


class Shipper:
    """Ships the entries of one workspace's audit log to ``s3://bucket/prefix``.

    One per ledger; it remembers how many leading entries it has seen on the
    remote with the local bytes, so it compares each entry once per process.
    Both methods expect the caller to hold the audit log's lock.
    """

    def __init__(self, *, url: str, retention_days: int, client: Any | None = None) -> None:
        """Prepares shipping; nothing is contacted until the first append.

        Args:
            url: ``audit.ship_to``.
            retention_days: ``audit.retention_days`` (Object Lock retention from each write).
            client: An S3 client (default: :func:`make_client`).
        """
        self.url = url
        self.retention_days = retention_days
        self.bucket, self.prefix = split_url(url)
        self._client = client
        self._confirmed = 0  # leading entries seen on the remote with the local bytes

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client()
        return self._client

    def prepare(self, *, log: VerifiedLog) -> None:
        """Before an append: the remote holds all of ``log`` (shipping what it lacks).

        Args:
            log: The verified log, refreshed under its lock.

        Raises:
            RefusedError: ``audit-ship``: the endpoint or bucket cannot be written
                (nothing was appended); ``audit-remote``: the remote holds an entry
                the local log lacks or one with other bytes (the local log was
                truncated or rewritten).
        """
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._catch_up(log)
        except (ClientError, BotoCoreError) as exc:
            raise RefusedError(
                SHIP_CHECK, f"cannot ship to {self.url} ({_why(exc)}); nothing was appended"
            ) from None

    def ship(self, *, log: VerifiedLog, seq: int) -> None:
        """After an append: ships entry ``seq`` (just written to the local log).

        Args:
            log: The verified log holding the new entry.
            seq: The new entry's sequence number.

        Raises:
            RefusedError: ``audit-ship``: the entry stays in the local log, unshipped
                (``aegis audit verify --remote`` reports it; the next append ships it
                first); ``audit-remote``: the remote already holds other bytes there.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._put(log, seq, written=True)
        except (ClientError, BotoCoreError) as exc:
            raise RefusedError(
                SHIP_CHECK,
                f"entry {seq} was written to the local log but not shipped to {self.url} "
                f"({_why(exc)}); `aegis audit verify --remote` reports it as unshipped and "
                "the next append ships it first",
            ) from None

    # -- the steps --------------------------------------------------------------------------

    def _catch_up(self, log: VerifiedLog) -> None:
        count = len(log)
        if not count:
            return
        object_lock_enabled(client=self.client, bucket=self.bucket)  # fails early, once
        listing: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        if count >= 2:
            listing["StartAfter"] = entry_key(prefix=self.prefix, seq=count - 2)
        page = self.client.list_objects_v2(**listing, MaxKeys=_PROBE_KEYS)
        seqs = self._seqs(o["Key"] for o in page.get("Contents", []))
        if count - 1 not in seqs:  # behind (never shipped, or a ship failed): list it all
            seqs = self._seqs(self._all_keys())
        ahead = [s for s in seqs if s >= count]
        if ahead:
            raise RefusedError(
                REMOTE_CHECK,
                f"entry {ahead[0]}: shipped to {self.url}, but the local log ends at entry "
                f"{count - 1} (truncated or rewritten locally); nothing was appended",
            )
        last = max(seqs, default=-1)
        if last >= self._confirmed:
            self._compare(log, last)
            self._confirmed = last + 1
        for seq in range(last + 1, count):
            self._put(log, seq)

    def _put(self, log: VerifiedLog, seq: int, *, written: bool = False) -> None:
        from botocore.exceptions import ClientError

        request: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": entry_key(prefix=self.prefix, seq=seq),
            "Body": _line(log, seq),
            "IfNoneMatch": "*",  # never over a shipped entry
            "ContentType": "application/json",
            "ChecksumAlgorithm": "SHA256",
        }
        if object_lock_enabled(client=self.client, bucket=self.bucket):
            request["ObjectLockMode"] = LOCK_MODE
            request["ObjectLockRetainUntilDate"] = datetime.now(UTC) + timedelta(
                days=self.retention_days
            )
        try:
            self.client.put_object(**request)
        except ClientError as exc:
            if _code(exc) != "PreconditionFailed":
                raise
            self._compare(log, seq, written=written)  # already there: these bytes?
        if seq == self._confirmed:
            self._confirmed = seq + 1

    def _compare(self, log: VerifiedLog, seq: int, *, written: bool = False) -> None:
        """Refuses (``audit-remote``) unless the remote's entry ``seq`` has the local bytes."""
        if seq < 0:
            return
        key = entry_key(prefix=self.prefix, seq=seq)
        if not _holds(self.client, bucket=self.bucket, key=key, expected=_line(log, seq)):
            outcome = "it stays in the local log, unshipped" if written else "nothing was appended"
            raise RefusedError(
                REMOTE_CHECK,
                f"entry {seq}: differs from the copy shipped to {self.url} (the local log was "
                f"rewritten); {outcome}",
            )

    def _all_keys(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def _seqs(self, keys) -> set[int]:
        return {s for k in keys if (s := seq_of(prefix=self.prefix, key=k)) is not None}


# -- comparing the local log with the shipped copy ------------------------------------------


@dataclass(frozen=True)
class RemoteCheck:
    """Result of a successful :func:`verify_remote`: the remote holds every local entry."""

    url: str
    entries: int
    object_lock: bool


def verify_remote(*, url: str, log: VerifiedLog, client: Any | None = None) -> RemoteCheck:
    """Compares the local log with its copy at ``url``, entry by entry.

    Every version of every entry's object is listed (Object Lock buckets are
    versioned): an entry's truth is its first version, the one Aegis wrote;
    a later version or a delete marker means someone overwrote or deleted it
    there. Bytes are compared by ETag (the MD5 of a single-part upload) and
    fetched where that differs; the last entry both hold is always fetched and
    compared byte for byte.

    Args:
        url: ``audit.ship_to``.
        log: The local log, verified.
        client: An S3 client (default: :func:`make_client`).

    Returns:
        What was compared, when the remote holds every local entry unchanged.

    Raises:
        RefusedError: ``audit-remote`` naming the first entry that the remote holds
            and the local log lacks or holds with other bytes (local truncation or
            rewrite), or that was overwritten or deleted remotely; else
            ``audit-ship`` with the count of local entries not shipped yet.
        UsageError: The bucket is missing or access is denied.
        TransientIOError: The endpoint is unreachable or failing.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    client = client or make_client()
    bucket, prefix = split_url(url)
    try:
        locked = object_lock_enabled(client=client, bucket=bucket)
        return _compare_all(client, url=url, bucket=bucket, prefix=prefix, log=log, locked=locked)
    except ClientError as exc:
        code = _code(exc)
        if code in ("NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise UsageError(f"audit.ship_to {url}: {code}") from None
        raise TransientIOError(f"audit.ship_to {url}: S3 error ({_why(exc)})") from None
    except BotoCoreError as exc:
        raise TransientIOError(
            f"audit.ship_to {url}: S3 endpoint {client.meta.endpoint_url} unreachable ({exc})"
        ) from None


def _compare_all(
    client: Any, *, url: str, bucket: str, prefix: str, log: VerifiedLog, locked: bool
) -> RemoteCheck:
    versions: dict[int, list[dict[str, Any]]] = {}
    deleted: dict[int, int] = {}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for version in page.get("Versions", []):  # newest first per key
            if (seq := seq_of(prefix=prefix, key=version["Key"])) is not None:
                versions.setdefault(seq, []).append(version)
        for marker in page.get("DeleteMarkers", []):
            if (seq := seq_of(prefix=prefix, key=marker["Key"])) is not None:
                deleted[seq] = deleted.get(seq, 0) + 1
    count = len(log)
    remote = sorted(set(versions) | set(deleted))
    problems: list[tuple[int, str]] = []
    fetched: set[int] = set()

    def differs(seq: int) -> bool:
        first = versions[seq][-1]  # the oldest version: what was shipped
        expected = _line(log, seq)
        if first["ETag"].strip('"') == hashlib.md5(expected, usedforsecurity=False).hexdigest():
            return False
        fetched.add(seq)
        version = first.get("VersionId")
        return not _holds(
            client, bucket=bucket, key=first["Key"], expected=expected, version=version
        )

    missing_locally = (
        f"shipped to {url}, but missing from the local log (truncated or rewritten locally)"
    )
    rewritten = f"differs from the copy shipped to {url} (the local log was rewritten)"
    for seq in remote:
        if seq >= count:
            problems.append((seq, missing_locally))
        elif seq in versions and differs(seq):
            problems.append((seq, rewritten))
        if len(versions.get(seq, ())) > 1 or seq in deleted:
            changes = f"{len(versions.get(seq, ()))} versions, {deleted.get(seq, 0)} delete markers"
            problems.append((seq, f"overwritten or deleted at {url} ({changes})"))
    common = [s for s in versions if s < count]
    if common and (last := max(common)) not in fetched:
        first = versions[last][-1]
        version = first.get("VersionId")
        if not _holds(client, bucket=bucket, key=first["Key"], expected=_line(log, last),
                      version=version):  # fmt: skip
            problems.append((last, rewritten))
    top = remote[-1] if remote else -1
    shipped = set(remote)
    problems.extend(
        (seq, f"missing at {url} although later entries were shipped (deleted there)")
        for seq in range(min(top, count))
        if seq not in shipped
    )
    if problems:
        seq, why = min(problems, key=lambda p: p[0])
        raise RefusedError(REMOTE_CHECK, f"entry {seq}: {why}")
    if top + 1 < count:
        first_missing, last_missing = top + 1, count - 1
        which = (
            f"entry {first_missing}"
            if first_missing == last_missing
            else f"entries {first_missing}-{last_missing}"
        )
        raise RefusedError(
            SHIP_CHECK,
            f"{count - first_missing} of {count} entries unshipped ({which} not at {url}): "
            "the next append ships them first",
        )
    return RemoteCheck(url=url, entries=count, object_lock=locked)


# -- small helpers ------------------------------------------------------------------------


def seq_of(*, prefix: str, key: str) -> int | None:
    """The entry number of an object key ``<prefix><seq:012d>.json``; None for other keys."""
    match = _KEY.fullmatch(key[len(prefix) :]) if key.startswith(prefix) else None
    return int(match[1]) if match else None


_KEY = re.compile(r"([0-9]{12})\.json")


def _line(log: VerifiedLog, seq: int) -> bytes:
    return log.raw(seq) + b"\n"


def _holds(
    client: Any, *, bucket: str, key: str, expected: bytes, version: str | None = None
) -> bool:
    """Whether the object (that version) holds exactly ``expected`` (absent: False).

    Reads no further than one byte past ``expected``: a planted huge object costs nothing.
    """
    from botocore.exceptions import ClientError

    request = {"Bucket": bucket, "Key": key}
    if version and version != "null":
        request["VersionId"] = version
    try:
        body = client.get_object(**request)["Body"]
    except ClientError as exc:
        if _code(exc) in ("NoSuchKey", "NoSuchVersion", "404"):
            return False
        raise
    try:
        return body.read(len(expected) + 1) == expected
    finally:
        body.close()


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _why(exc: Exception) -> str:
    return _code(exc) or str(exc)
