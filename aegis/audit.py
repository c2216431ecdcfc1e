"""Hash-chained, append-only audit log with a signed head.

Each line of ``log.jsonl`` is one entry holding the previous entry's hash,
the actor's key id, the action, the digests of its subjects and a UTC time;
its own ``hash`` covers all of that. After every append, ``head.json`` gets
the pipeline key's signature over the last entry's sequence number and hash.

What this detects, without any key: editing, deleting, reordering or
inserting an entry (the chain breaks), truncating the log (the signed head
names an entry that is gone), and appending behind the pipeline's back (an
entry after the signed head). What it cannot detect: someone holding the
pipeline private key can rewrite history and re-sign the head. Shipping the
log off the machine (e.g. S3 Object Lock) is the answer to that.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aegis.crypto.keys import PrivateKey, canonical_json, verify_signature
from aegis.errors import RefusedError
from aegis.fileutil import atomic_write, file_lock
from aegis.timeutil import utc_now

GENESIS = "0" * 64


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


@dataclass(frozen=True)
class AuditCheck:
    """Result of a successful verification."""

    entries: int
    head_hash: str


class AuditLog:
    """The audit log in a directory: ``log.jsonl``, ``head.json``, ``.lock``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.log_path = directory / "log.jsonl"
        self.head_path = directory / "head.json"
        self.lock_path = directory / ".lock"

    def append(
        self,
        *,
        actor: str,
        action: str,
        pipeline_key: PrivateKey,
        subjects: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """Appends one entry under the lock and re-signs the head.

        Args:
            actor: Key id of whoever asked for the action.
            action: Dotted action name, e.g. ``ingest.accepted``.
            pipeline_key: The workspace's pipeline key, which signs the head.
            subjects: Digests of what the action is about (``{"dataset": "sha256:..."}``).
            details: Other facts worth keeping (JSON-serializable).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        with file_lock(self.lock_path):
            last = self._last_entry()
            self._check_tail_is_signed(last, pipeline_key)
            entry = AuditEntry(
                seq=0 if last is None else last.seq + 1,
                time=utc_now(),
                actor=actor,
                action=action,
                subjects=dict(subjects or {}),
                details=dict(details or {}),
                prev=GENESIS if last is None else last.hash,
            )
            entry = AuditEntry(**{**asdict(entry), "hash": entry.compute_hash()})
            line = json.dumps(asdict(entry), sort_keys=True, ensure_ascii=False) + "\n"
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self._sign_head(entry, pipeline_key)
        return entry

    def _check_tail_is_signed(self, last: AuditEntry | None, key: PrivateKey) -> None:
        """Refuses to chain onto a tail the pipeline did not sign.

        Without this, the next append would re-sign a truncated log or an
        entry forged behind Aegis's back and make the tampering permanent.
        A crash between writing an entry and signing the head looks the
        same and is refused too: ``aegis audit verify`` names the entry to
        inspect and remove by hand.
        """
        head = self._read_head()
        if last is None and head is None:
            return  # a new log
        if head is None:
            raise RefusedError("audit", "head signature is missing; run `aegis audit verify`")
        claim = {"seq": head.get("seq"), "hash": head.get("hash")}
        if not verify_signature(
            key.public_pem, canonical_json(claim), str(head.get("signature", ""))
        ):
            raise RefusedError("audit", "head signature does not verify with the pipeline key")
        if last is None or (last.seq, last.hash) != (claim["seq"], claim["hash"]):
            raise RefusedError(
                "audit",
                "the log's last entry is not the signed head (truncated or appended by "
                "hand); run `aegis audit verify`",
            )

    def _sign_head(self, entry: AuditEntry, key: PrivateKey) -> None:
        claim = {"seq": entry.seq, "hash": entry.hash}
        head = {**claim, "key_id": key.key_id, "signature": key.sign(canonical_json(claim))}
        atomic_write(self.head_path, json.dumps(head, sort_keys=True).encode() + b"\n")

    def _last_entry(self) -> AuditEntry | None:
        """Reads only the tail of the log: appends stay O(1) as it grows."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                chunk = 1 << 16
                while True:
                    start = max(0, size - chunk)
                    fh.seek(start)
                    tail = fh.read(size - start)
                    lines = tail.rstrip(b"\n").split(b"\n")
                    if len(lines) > 1 or start == 0:
                        break
                    chunk *= 2
        except FileNotFoundError:
            return None
        if not lines or not lines[-1]:
            return None
        try:
            return AuditEntry(**json.loads(lines[-1]))
        except (ValueError, TypeError):
            raise RefusedError("audit", "last entry of the audit log is corrupt") from None

    def entries(self) -> list[AuditEntry]:
        """Parses every entry (no chain check; see :meth:`verify`).

        Raises:
            RefusedError: A line is not a valid entry.
        """
        out: list[AuditEntry] = []
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return out
        # Split on b"\n" only, as written: str.splitlines() would also split inside
        # entries holding U+2028 or U+0085, which json.dumps leaves unescaped.
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        for index, line in enumerate(lines):
            try:
                out.append(AuditEntry(**json.loads(line)))
            except (ValueError, TypeError):
                raise RefusedError(
                    "audit", f"entry {index} (line {index + 1}): not a valid audit entry"
                ) from None
        return out

    def verify(self, *, pipeline_public_key: str) -> AuditCheck:
        """Checks the whole chain and the signed head.

        Args:
            pipeline_public_key: PEM of the pipeline key that signs the head.

        Returns:
            The number of entries and the head hash.

        Raises:
            RefusedError: ``audit`` check naming the first bad entry.
        """
        with contextlib.ExitStack() as stack:
            if self.directory.is_dir():
                # Read log and head as one snapshot: an append between the two reads
                # would look like truncation. A read-only copy has no writers to wait for.
                with contextlib.suppress(OSError):
                    stack.enter_context(file_lock(self.lock_path))
            entries = self.entries()
            head = self._read_head()
        prev = GENESIS
        for index, entry in enumerate(entries):
            where = f"entry {index}"
            if entry.seq != index:
                raise RefusedError(
                    "audit", f"{where}: sequence number is {entry.seq} (reordered or removed)"
                )
            if entry.prev != prev:
                raise RefusedError(
                    "audit",
                    f"{where}: previous-hash link broken (an entry before it was "
                    "removed, inserted or reordered)",
                )
            if entry.compute_hash() != entry.hash:
                raise RefusedError("audit", f"{where} ({entry.action}): content was edited")
            prev = entry.hash
        if head is None:
            if entries:
                raise RefusedError("audit", "head signature is missing")
            return AuditCheck(entries=0, head_hash=GENESIS)
        claim = {"seq": head.get("seq"), "hash": head.get("hash")}
        if not verify_signature(
            pipeline_public_key, canonical_json(claim), str(head.get("signature", ""))
        ):
            raise RefusedError("audit", "head signature does not verify with the pipeline key")
        seq = claim["seq"]
        if not isinstance(seq, int) or seq >= len(entries):
            raise RefusedError(
                "audit",
                f"log truncated: the signed head names entry {seq}, the log ends at "
                f"entry {len(entries) - 1}",
            )
        if entries[seq].hash != claim["hash"]:
            raise RefusedError("audit", f"entry {seq}: does not match the signed head")
        if seq != len(entries) - 1:
            raise RefusedError(
                "audit", f"entry {seq + 1}: appended after the signed head (not by Aegis)"
            )
        return AuditCheck(entries=len(entries), head_hash=prev)

    def _read_head(self) -> dict[str, Any] | None:
        try:
            head = json.loads(self.head_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            raise RefusedError("audit", "head.json is not valid JSON") from None
        if not isinstance(head, dict):
            raise RefusedError("audit", "head.json is malformed")
        return head
