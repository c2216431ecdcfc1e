"""Hash-chained, append-only audit log with a signed head that binds its bytes.

Each line of ``log.jsonl`` is one entry holding the previous entry's hash,
the actor's key id, the action, the digests of its subjects and a UTC time;
its own ``hash`` covers all of that. After every append, ``head.json`` gets
the pipeline key's signature over the last entry's sequence number and hash
and over the log's exact size and SHA-256 (``aegis-audit-head/2``).

Verifying a log therefore costs one SHA-256 of the file (:class:`VerifiedLog`):
bytes equal to what the pipeline signed are entries the pipeline wrote, so
they need not be re-serialized one by one. ``aegis audit verify`` still checks
every entry's hash and link (:meth:`AuditLog.verify`), and a head written
before the log's bytes were signed (format 1) is verified that way too and
upgraded by the next append. Appending re-checks the file against the signed
head first, so an edit anywhere in the log is never laundered into a new
signature.

What this detects, without any key: editing, deleting, reordering or
inserting an entry, truncating the log, and appending behind the pipeline's
back. What it cannot detect alone: someone holding the pipeline private key
can rewrite history and re-sign the head (the copy shipped off the machine
sees it; see :mod:`aegis.audit_ship`), and an older copy of the whole log
with its own older head is self-consistent (the ledger compares it with
what git recorded; see :mod:`aegis.ledger`).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aegis.crypto.keys import PrivateKey, canonical_json, verify_signature
from aegis.errors import AuditError, UnsafeFileError
from aegis.fileutil import atomic_write, file_lock, read_optional, read_tail
from aegis.timeutil import utc_now

GENESIS = "0" * 64
HEAD_FORMAT = "aegis-audit-head/2"
# The log is verified in memory: over 1 GiB (some two million entries) is a
# planted file, not ours, and reading it could exhaust a small machine.
LOG_LIMIT = 1024**3
_ACTION_PREFIX = b'{"action": "'


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log."""

    seq: int
    time: str
    actor: str
    action: str
    subjects: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    prev: str = GENESIS
    hash: str = ""

    def body(self) -> dict[str, Any]:
        """Everything the entry's hash covers (all fields but ``hash``)."""
        data = asdict(self)
        del data["hash"]
        return data

    def compute_hash(self) -> str:
        return hashlib.sha256(canonical_json(self.body())).hexdigest()

    @classmethod
    def parse(cls, line: bytes, index: int) -> AuditEntry:
        """Parses one line (any field of the wrong type is refused).

        Raises:
            AuditError: Not a valid audit entry.
        """
        try:
            data = json.loads(line)
            entry = cls(**data)
            if not (
                isinstance(entry.seq, int)
                and all(isinstance(v, str) for v in (entry.time, entry.actor, entry.action))
                and isinstance(entry.subjects, dict)
                and isinstance(entry.details, dict)
                and isinstance(entry.prev, str)
                and isinstance(entry.hash, str)
            ):
                raise TypeError
        except (ValueError, TypeError, RecursionError):
            raise AuditError(f"entry {index} (line {index + 1}): not a valid audit entry") from None
        return entry

    def line(self) -> bytes:
        return (json.dumps(asdict(self), sort_keys=True, ensure_ascii=False) + "\n").encode()


@dataclass(frozen=True)
class AuditCheck:
    """Result of a successful verification."""

    entries: int
    head_hash: str


@dataclass(frozen=True)
class SignedHead:
    """``head.json``: the pipeline's signature over the last entry and the log's bytes."""

    seq: int
    hash: str
    size: int | None  # None: format 1 (the log's bytes were not signed yet)
    sha256: str | None
    key_id: str
    signature: str

    def claim(self) -> dict[str, Any]:
        claim: dict[str, Any] = {"seq": self.seq, "hash": self.hash}
        if self.size is not None:
            claim |= {"format": HEAD_FORMAT, "size": self.size, "sha256": self.sha256}
        return claim

    def verifies(self, public_key: str) -> bool:
        return verify_signature(public_key, canonical_json(self.claim()), self.signature)


def _split(data: bytes) -> list[bytes]:
    # Split on b"\n" only, as written: str.splitlines() would also split inside
    # entries holding U+2028 or U+0085, which json.dumps leaves unescaped.
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def check_chain(lines: list[bytes], *, start: int = 0, prev: str = GENESIS) -> list[AuditEntry]:
    """Parses ``lines`` and checks every sequence number, link and hash.

    Raises:
        AuditError: Naming the first bad entry.
    """
    entries = []
    for offset, line in enumerate(lines):
        index = start + offset
        entry = AuditEntry.parse(line, index)
        where = f"entry {index}"
        if entry.seq != index:
            raise AuditError(f"{where}: sequence number is {entry.seq} (reordered or removed)")
        if entry.prev != prev:
            raise AuditError(
                f"{where}: previous-hash link broken (an entry before it was "
                "removed, inserted or reordered)"
            )
        if entry.compute_hash() != entry.hash:
            raise AuditError(f"{where} ({entry.action}): content was edited")
        entries.append(entry)
        prev = entry.hash
    return entries


class AuditLog:
    """The audit log in a directory: ``log.jsonl``, ``head.json``, ``.lock``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.log_path = directory / "log.jsonl"
        self.head_path = directory / "head.json"
        self.lock_path = directory / ".lock"

    def lock(self):
        """The log's own lock: appends and consistent snapshots of log + head."""
        return file_lock(self.lock_path)

    def read(self) -> tuple[bytes, SignedHead | None]:
        """The log's bytes and its head, as one snapshot (under the log's lock).

        Raises:
            AuditError: Either is not a regular file, or the head is malformed.
        """
        try:
            if self.directory.is_dir():
                with self.lock():
                    return self._read_unlocked()
        except PermissionError:
            pass  # a read-only copy has no writers to wait for
        return self._read_unlocked()

    def _read_unlocked(self) -> tuple[bytes, SignedHead | None]:
        try:
            data = read_optional(self.log_path, limit=LOG_LIMIT, what="log.jsonl") or b""
            raw = read_optional(self.head_path, what="head.json")
        except UnsafeFileError as exc:
            raise AuditError(exc.detail) from None
        return data, (None if raw is None else _parse_head(raw))

    def append(
        self,
        *,
        actor: str,
        action: str,
        pipeline_key: PrivateKey,
        subjects: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """Verifies the log against ``pipeline_key``, then appends one entry.

        A convenience for one-off appends; a command appends through its
        ledger's :class:`VerifiedLog`, which verified the log once already.

        Raises:
            AuditError: The log does not verify (a truncated, edited or hand-appended
                log is never chained onto, so its tampering is not laundered).
        """
        view = VerifiedLog.open(self, pipeline_public_key=pipeline_key.public_pem)
        return view.append(
            actor=actor, action=action, pipeline_key=pipeline_key, subjects=subjects,
            details=details,
        )  # fmt: skip

    def entries(self) -> list[AuditEntry]:
        """Parses every entry, unverified (``aegis audit show``; see :meth:`verify`).

        Raises:
            AuditError: A line is not a valid entry.
        """
        data, _ = self.read()
        return [AuditEntry.parse(line, i) for i, line in enumerate(_split(data))]

    def verify(self, *, pipeline_public_key: str) -> AuditCheck:
        """Checks every entry's hash and link, the signed head and the signed bytes.

        Raises:
            AuditError: ``audit`` check naming the first bad entry.
        """
        data, head = self.read()
        entries = check_chain(_split(data))
        _check_head(head, entries[-1] if entries else None, len(entries), pipeline_public_key)
        if head is not None and head.size is not None:
            _check_bytes(data, head)
        return AuditCheck(entries=len(entries), head_hash=entries[-1].hash if entries else GENESIS)


def _parse_head(raw: bytes) -> SignedHead:
    try:
        head = json.loads(raw)
    except (ValueError, RecursionError):
        raise AuditError("head.json is not valid JSON") from None
    if not isinstance(head, dict):
        raise AuditError("head.json is malformed")
    try:
        size = head.get("size")
        signed = SignedHead(
            seq=head["seq"],
            hash=head["hash"],
            size=size,
            sha256=head.get("sha256"),
            key_id=str(head.get("key_id", "")),
            signature=str(head.get("signature", "")),
        )
        if not (
            isinstance(signed.seq, int)
            and isinstance(signed.hash, str)
            and (size is None or (isinstance(size, int) and isinstance(signed.sha256, str)))
        ):
            raise TypeError
    except (KeyError, TypeError):
        raise AuditError("head.json is malformed") from None
    return signed


def _check_head(
    head: SignedHead | None, last: AuditEntry | None, count: int, public_key: str
) -> None:
    if head is None:
        if count:
            raise AuditError("head signature is missing")
        return
    if not head.verifies(public_key):
        raise AuditError("head signature does not verify with the pipeline key")
    if head.seq >= count:
        raise AuditError(
            f"log truncated: the signed head names entry {head.seq}, the log ends at "
            f"entry {count - 1}"
        )
    if head.seq != count - 1:
        raise AuditError(f"entry {head.seq + 1}: appended after the signed head (not by Aegis)")
    if last is None or last.hash != head.hash:
        raise AuditError(f"entry {head.seq}: does not match the signed head")


def _bytes_signed(data: bytes, head: SignedHead, public_key: str) -> bool:
    """Whether ``head`` is a format-2 head over exactly ``data``, signed by ``public_key``."""
    return (
        head.size == len(data)
        and head.verifies(public_key)
        and hashlib.sha256(data).hexdigest() == head.sha256
    )


def _check_bytes(data: bytes, head: SignedHead) -> None:
    if len(data) != head.size or hashlib.sha256(data).hexdigest() != head.sha256:
        raise AuditError("the log's bytes differ from the signed head (edited by hand)")


class VerifiedLog:
    """A verified snapshot of the audit log, parsed on demand, kept current incrementally.

    :meth:`open` verifies the whole log once (one SHA-256 of its bytes against
    the signed head); :meth:`refresh` verifies only what was appended since;
    :meth:`append` writes through it. Entries are parsed when first asked for,
    by action, so a query reads only the lines it needs.
    """

    def __init__(self, log: AuditLog, public_key: str) -> None:
        self.log = log
        self.public_key = public_key
        self._lines: list[bytes] = []
        self._parsed: dict[int, AuditEntry] = {}
        self._by_action: dict[str, list[int]] = {}
        self._hasher = hashlib.sha256()
        self._size = 0
        self._head: SignedHead | None = None

    @classmethod
    def open(cls, log: AuditLog, *, pipeline_public_key: str) -> VerifiedLog:
        """Reads and verifies the whole log.

        Raises:
            AuditError: The log does not verify (naming the first bad entry).
        """
        view = cls(log, pipeline_public_key)
        data, head = log.read()
        lines = _split(data)
        if head is not None and _bytes_signed(data, head, pipeline_public_key):
            last = AuditEntry.parse(lines[-1], len(lines) - 1) if lines else None
            _check_head(head, last, len(lines), pipeline_public_key)
            if last is not None:
                view._parsed[last.seq] = last
            view._take(lines, data, head)
            return view
        # a format-1 head, or bytes that differ: the full check names what is wrong
        entries = check_chain(lines)
        _check_head(head, entries[-1] if entries else None, len(entries), pipeline_public_key)
        if head is not None and head.size is not None:
            _check_bytes(data, head)
        view._parsed.update((e.seq, e) for e in entries)
        view._take(lines, data, head)
        return view

    def _take(self, lines: list[bytes], data: bytes, head: SignedHead | None) -> None:
        start = len(self._lines)
        self._lines.extend(lines)
        skip = len(_ACTION_PREFIX)
        # one pass of C-level slicing; a line not in Aegis's own form is parsed instead
        raw = [
            line[skip : line.find(b'"', skip)] if line.startswith(_ACTION_PREFIX) else None
            for line in lines
        ]
        by_raw: dict[bytes | None, list[int]] = {}
        for seq, action in enumerate(raw, start):
            by_raw.setdefault(action, []).append(seq)
        for action, seqs in by_raw.items():
            if action is None or b"\\" in action:
                for seq in seqs:
                    self._by_action.setdefault(self.entry(seq).action, []).append(seq)
            else:
                self._by_action.setdefault(action.decode("utf-8", "replace"), []).extend(seqs)
        self._hasher.update(data)
        self._size += len(data)
        self._head = head

    # -- reading ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._lines)

    @property
    def last(self) -> AuditEntry | None:
        return self.entry(len(self._lines) - 1) if self._lines else None

    @property
    def head_hash(self) -> str:
        last = self.last
        return last.hash if last is not None else GENESIS

    def entry(self, seq: int) -> AuditEntry:
        """Entry ``seq`` (parsed once; the bytes were verified)."""
        entry = self._parsed.get(seq)
        if entry is None:
            entry = self._parsed[seq] = AuditEntry.parse(self._lines[seq], seq)
        return entry

    def actions(self) -> Iterable[str]:
        return self._by_action.keys()

    def by_action(self, *actions: str) -> list[AuditEntry]:
        """The entries of ``actions``, in log order."""
        return [self.entry(s) for s in self._seqs(actions)]

    def scan(
        self, actions: Iterable[str], *needles: str, reverse: bool = False
    ) -> Iterator[AuditEntry]:
        """The entries of ``actions`` whose line contains every needle, in (reverse) log order.

        A needle is a value as it is written in the line (a digest, a key id, a
        name as JSON): lines without it are never parsed, so a query over a long
        log reads bytes, not JSON. Callers still check the parsed entry's fields.
        """
        raw = [json.dumps(n, ensure_ascii=False).encode()[1:-1] for n in needles]
        seqs = self._seqs(tuple(actions))
        for seq in reversed(seqs) if reverse else seqs:
            line = self._lines[seq]
            if all(n in line for n in raw):
                yield self.entry(seq)

    def raw(self, seq: int) -> bytes:
        """The verified bytes of entry ``seq`` (its JSON line, as the pipeline wrote it)."""
        return self._lines[seq]

    def seqs_since(self, actions: tuple[str, ...], start: int) -> list[int]:
        """Sequence numbers of the entries of ``actions`` from ``start`` on, in log order."""
        seqs = self._seqs(actions)
        return seqs[bisect.bisect_left(seqs, start) :] if start else list(seqs)

    def _seqs(self, actions: tuple[str, ...]) -> list[int]:
        if len(actions) == 1:
            return self._by_action.get(actions[0], [])
        return sorted(s for a in actions for s in self._by_action.get(a, ()))

    def __iter__(self) -> Iterator[AuditEntry]:
        return (self.entry(s) for s in range(len(self._lines)))

    # -- staying current -------------------------------------------------------------------

    def refresh(self) -> int:
        """Verifies and takes in what was appended since; returns how many entries.

        Raises:
            AuditError: The log shrank, or what follows is not what the pipeline signed.
        """
        with self.log.lock():
            return self._refresh_locked()

    def _refresh_locked(self) -> int:
        try:
            head_raw = read_optional(self.log.head_path, what="head.json")
            tail = read_tail(self.log.log_path, self._size, limit=LOG_LIMIT)
        except UnsafeFileError as exc:
            raise AuditError(exc.detail) from None
        if tail is None:
            raise AuditError(f"log truncated: it shrank below the {self._size} bytes verified")
        head = None if head_raw is None else _parse_head(head_raw)
        if head == self._head and not tail:
            return 0
        if head is None or head.size is None or not head.verifies(self.public_key):
            raise AuditError("head signature is missing or does not verify")
        new = tail
        hasher = self._hasher.copy()
        hasher.update(new)
        if self._size + len(new) != head.size or hasher.hexdigest() != head.sha256:
            raise AuditError("what was appended differs from the signed head (not by Aegis)")
        added = check_chain(_split(new), start=len(self._lines), prev=self.head_hash)
        _check_head(head, added[-1] if added else self.last, len(self._lines) + len(added),
                    self.public_key)  # fmt: skip
        self._parsed.update((e.seq, e) for e in added)
        self._take(_split(new), new, head)
        return len(added)

    def append(
        self,
        *,
        actor: str,
        action: str,
        pipeline_key: PrivateKey,
        subjects: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """Appends one entry under the log's lock and signs the new head.

        The view is refreshed first, so the entry chains onto the verified tail
        and the head is signed over bytes this process checked.

        Args:
            actor: Key id of whoever asked for the action.
            action: Dotted action name, e.g. ``ingest.accepted``.
            pipeline_key: The workspace's pipeline key, which signs the head.
            subjects: Digests of what the action is about (``{"dataset": "sha256:..."}``).
            details: Other facts worth keeping (JSON-serializable).

        Raises:
            AuditError: The log on disk is not the verified one.
        """
        self.log.directory.mkdir(parents=True, exist_ok=True)
        with self.log.lock():
            if self._lines or self.log.log_path.exists() or self.log.head_path.exists():
                self._refresh_locked()
            entry = AuditEntry(
                seq=len(self._lines),
                time=utc_now(),
                actor=actor,
                action=action,
                subjects=dict(subjects or {}),
                details=dict(details or {}),
                prev=self.head_hash,
            )
            entry = AuditEntry(**{**asdict(entry), "hash": entry.compute_hash()})
            line = entry.line()
            fd = os.open(
                self.log.log_path,
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644,
            )
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            hasher = self._hasher.copy()
            hasher.update(line)
            claim = {
                "format": HEAD_FORMAT,
                "seq": entry.seq,
                "hash": entry.hash,
                "size": self._size + len(line),
                "sha256": hasher.hexdigest(),
            }
            head = SignedHead(
                entry.seq, entry.hash, claim["size"], claim["sha256"], pipeline_key.key_id,
                pipeline_key.sign(canonical_json(claim)),
            )  # fmt: skip
            document = {**claim, "key_id": head.key_id, "signature": head.signature}
            atomic_write(self.log.head_path, json.dumps(document, sort_keys=True).encode() + b"\n")
            self._parsed[entry.seq] = entry
            self._take([line.rstrip(b"\n")], line, head)
        return entry
