"""The signed trust store: which keys may do what, and who owns them.

The store is an append-only chain of changes (``add``, ``revoke``,
``retire``). Each change names the hash of the one before it and is signed
by an admin key that is active in the state *before* the change; the first
change adds the anchor admin and is signed by it. The anchor's key id is
kept outside the store (``.aegis/workspace.json``), so a store rewritten
from scratch with another admin is refused. Hand edits break a signature or
the hash chain and are refused on every load.

``revoke`` means compromised: nothing the key signed verifies, from any
time. ``retire`` means rotated out: it signs nothing new, but what it
signed before still verifies. Past changes to the store itself stay valid
after their signer is revoked, because later admins signed on top of them.

Two key types: ``p256`` (ECDSA P-256, every signing role; the public key is its PEM)
and ``x25519`` (a serving identity that opens sealed exports and signs nothing; the
public key is its age recipient ``age1...``). The key id is the SHA-256 of the public
key's text either way. An ``add`` of a P-256 key records no ``key_type`` (its bytes are
those of stores made before X25519 identities existed); an X25519 one records
``"key_type": "x25519"``, which an older Aegis refuses as malformed (closed, not open).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import UnsupportedAlgorithm

from aegis.crypto.keys import (
    PrivateKey,
    canonical_json,
    key_id_of_pem,
    verify_signature,
)
from aegis.crypto.keys import public_pem as pem_of_public_key
from aegis.errors import RefusedError, TrustStoreError, UnsafeFileError, UsageError
from aegis.fileutil import atomic_write, read_regular
from aegis.text import has_unseen
from aegis.timeutil import utc_now

Role = Literal["admin", "supplier", "operator", "approver", "pipeline"]
ROLES: tuple[str, ...] = (
    "admin", "supplier", "operator", "approver", "pipeline", "serving", "monitor",
)  # fmt: skip
OWNER_LIMIT = 128
Status = Literal["active", "retired", "revoked"]
FORMAT = "aegis-trust/1"
P256 = "p256"
X25519 = "x25519"
KEY_TYPES = (P256, X25519)


@dataclass(frozen=True)
class TrustEntry:
    """One key in the trust store."""

    name: str
    role: str
    owner: str
    key_id: str
    public_key: str
    status: str = "active"
    added_at: str = ""
    changed_at: str = ""
    reason: str = ""
    key_type: str = P256  # "x25519": a serving identity; public_key is its age recipient


def _record_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(record)).hexdigest()


class TrustStore:
    """A verified trust store, loaded from and saved to one JSON file."""

    def __init__(self, path: Path, anchor: str, records: list[dict[str, Any]]) -> None:
        self.path = path
        self.anchor = anchor
        self._records = records
        self._entries: dict[str, TrustEntry] = {}
        self._replay()

    # -- loading and verifying -------------------------------------------------

    @classmethod
    def create(cls, path: Path, *, admin: PrivateKey, name: str, owner: str) -> TrustStore:
        """Starts a store whose anchor is ``admin`` (self-signed first change)."""
        if path.exists():
            raise UsageError(f"{path}: trust store already exists")
        store = cls(path, admin.key_id, [])
        store._append(
            {"op": "add", "entry": _new_entry(name, "admin", owner, admin.public_pem)}, admin
        )
        return store

    @classmethod
    def load(cls, path: Path, *, anchor: str) -> TrustStore:
        """Loads the store and verifies every change against the anchor.

        Raises:
            RefusedError: ``trust-store`` check: unreadable, not JSON, a broken
                chain, a bad signature, or a change by a key that was not an
                active admin at the time.
        """
        try:
            data = json.loads(read_regular(path, what=path.name))
        except FileNotFoundError:
            raise TrustStoreError(f"{path}: missing") from None
        except UnsafeFileError as exc:
            raise TrustStoreError(exc.detail) from None
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            raise TrustStoreError(f"{path}: not valid JSON") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise TrustStoreError(f"{path}: unknown format")
        records = data.get("changes")
        if not isinstance(records, list) or not records:
            raise TrustStoreError(f"{path}: has no changes (unsigned store)")
        return cls(path, anchor, records)

    def _replay(self) -> None:
        entries: dict[str, TrustEntry] = {}
        prev = None
        for seq, record in enumerate(self._records):
            where = f"trust store change {seq}"
            try:
                change, signer_id, signature = (
                    record["change"],
                    record["signer"],
                    record["signature"],
                )
                if change["seq"] != seq or change.get("prev") != prev:
                    raise TrustStoreError(f"{where}: hash chain broken")
                signer = self._signer_for(entries, signer_id, change, where)
            except (KeyError, TypeError, AttributeError):
                raise TrustStoreError(f"{where}: malformed") from None
            if not verify_signature(signer.public_key, canonical_json(change), signature):
                raise TrustStoreError(f"{where}: signature does not verify")
            try:
                entries = _apply(entries, change)
            except (KeyError, TypeError, ValueError) as exc:
                raise TrustStoreError(f"{where}: invalid change ({exc})") from None
            prev = _record_hash(record)
        self._entries = entries

    def _signer_for(
        self, entries: dict[str, TrustEntry], signer_id: str, change: dict, where: str
    ) -> TrustEntry:
        if change.get("seq") == 0:
            entry = change.get("entry") or {}
            if (
                change.get("op") != "add"
                or entry.get("role") != "admin"
                or signer_id != self.anchor
                or key_id_of_pem(entry.get("public_key", "")) != self.anchor
            ):
                raise TrustStoreError(f"{where}: first change is not the workspace's anchor admin")
            return TrustEntry(**entry)
        for entry in entries.values():
            if entry.key_id == signer_id:
                if entry.role != "admin" or entry.status != "active":
                    raise TrustStoreError(
                        f"{where}: signed by '{entry.name}', not an active admin at the time"
                    )
                return entry
        raise TrustStoreError(f"{where}: signed by an unknown key")

    # -- reading ----------------------------------------------------------------

    @property
    def entries(self) -> list[TrustEntry]:
        return list(self._entries.values())

    @property
    def head(self) -> str:
        """Hash of the last change: recorded in the audit log on every change."""
        return _record_hash(self._records[-1])

    def record_hashes(self) -> set[str]:
        """The hash of every change: the store extends each earlier state it passed through."""
        return {_record_hash(r) for r in self._records}

    def get(self, name: str) -> TrustEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise UsageError(f"no trust entry named '{name}'") from None

    def by_key_id(self, key_id: str) -> TrustEntry | None:
        for entry in self._entries.values():
            if entry.key_id == key_id:
                return entry
        return None

    def require_signer(self, key_id: str, *, role: str, what: str, new: bool) -> TrustEntry:
        """Checks that ``key_id`` is trusted for ``role``.

        Args:
            key_id: The key that signed (or is about to sign) something.
            role: The role the key must hold.
            what: What was signed, for the message.
            new: True for a signature being made now (retired keys refused),
                False for verifying an existing signature (retired keys accepted).

        Raises:
            RefusedError: ``signer`` check, naming why.
        """
        entry = self.by_key_id(key_id)
        if entry is None:
            raise RefusedError("signer", f"{what}: signed by an unknown key ({key_id[:12]})")
        if entry.key_type != P256:
            raise RefusedError(
                "signer", f"{what}: '{entry.name}' is an X25519 serving identity, which never signs"
            )
        if entry.status == "revoked":
            raise RefusedError("signer", f"{what}: signer '{entry.name}' is revoked")
        if new and entry.status == "retired":
            raise RefusedError("signer", f"{what}: key '{entry.name}' is retired")
        if entry.role != role:
            raise RefusedError(
                "signer", f"{what}: signer '{entry.name}' has role {entry.role}, not {role}"
            )
        return entry

    # -- changing -----------------------------------------------------------------

    def add(self, *, name: str, role: str, owner: str, public_pem: str, admin: PrivateKey) -> None:
        """Adds a key, signed by ``admin``."""
        if role not in ROLES:
            raise UsageError(f"unknown role '{role}' (one of {', '.join(ROLES)})")
        if name in self._entries:
            raise UsageError(f"a trust entry named '{name}' already exists")
        public_pem = _normalized_p256_pem(public_pem)
        if self.by_key_id(key_id_of_pem(public_pem)) is not None:
            raise UsageError("this public key is already in the trust store")
        self._append({"op": "add", "entry": _new_entry(name, role, owner, public_pem)}, admin)

    def add_identity(self, *, name: str, owner: str, recipient: str, admin: PrivateKey) -> None:
        """Adds an X25519 serving identity (its age recipient), signed by ``admin``."""
        from aegis.crypto.sealing import normalized_recipient

        if name in self._entries:
            raise UsageError(f"a trust entry named '{name}' already exists")
        recipient = normalized_recipient(recipient)
        if self.by_key_id(key_id_of_pem(recipient)) is not None:
            raise UsageError("this recipient is already in the trust store")
        entry = _new_entry(name, "serving", owner, recipient) | {"key_type": X25519}
        self._append({"op": "add", "entry": entry}, admin)

    def set_status(self, name: str, status: str, *, reason: str, admin: PrivateKey) -> None:
        """Revokes or retires the key called ``name``, signed by ``admin``.

        Args:
            name: The trust entry to change.
            status: ``revoked`` (compromised) or ``retired`` (rotated out).
            reason: Why, kept in the store.
            admin: An active admin key, which signs the change.
        """
        if status not in ("revoked", "retired"):
            raise UsageError(f"unknown status '{status}' (revoked or retired)")
        entry = self.get(name)
        if entry.status == "revoked" or entry.status == status:
            raise UsageError(f"'{name}' is already {entry.status}")
        if entry.role == "admin":
            others = [
                e
                for e in self._entries.values()
                if e.role == "admin" and e.status == "active" and e.name != name
            ]
            if not others:
                raise UsageError(f"'{name}' is the last active admin; add another admin first")
        op = "revoke" if status == "revoked" else "retire"
        self._append({"op": op, "name": name, "reason": reason}, admin)

    def _append(self, change: dict[str, Any], admin: PrivateKey) -> None:
        change = {
            **change,
            "seq": len(self._records),
            "prev": self.head if self._records else None,
            "time": utc_now(),
        }
        if self._records:
            signer = self.by_key_id(admin.key_id)
            if signer is None or signer.role != "admin":
                raise RefusedError("signer", "trust store changes need an admin key")
            if signer.status != "active":
                raise RefusedError("signer", f"admin key '{signer.name}' is {signer.status}")
        record = {
            "change": change,
            "signer": admin.key_id,
            "signature": admin.sign(canonical_json(change)),
        }
        records = [*self._records, record]
        self._entries = _apply(self._entries, change)
        self._records = records
        self.save()

    def save(self) -> None:
        data = {"format": FORMAT, "changes": self._records}
        atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True).encode() + b"\n")

    def to_json(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in asdict(e).items() if k != "public_key"} for e in self.entries]


def _normalized_p256_pem(text: str) -> str:
    """Re-serializes a P-256 public key in the one form whose hash is its key id."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_public_key(text.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise UsageError("not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise UsageError("only ECDSA P-256 public keys can be trusted")
    return pem_of_public_key(key)


def _new_entry(name: str, role: str, owner: str, public_pem: str) -> dict[str, Any]:
    # Names become file names, commit subjects and table cells: ASCII only, so
    # no look-alike letters, no terminal controls. Owners are people's names:
    # any script, but one printable line.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise UsageError(
            f"key name {name[:80]!r}: 1-64 ASCII letters, digits, '-', '_' or '.' "
            "(starting with a letter or digit)"
        )
    if not owner.strip():
        raise UsageError("owner must not be empty")
    if has_unseen(owner) or len(owner) > OWNER_LIMIT:
        raise UsageError(
            f"owner {owner[:80]!r}: one line of printable text, at most {OWNER_LIMIT} characters"
        )
    return {
        "name": name,
        "role": role,
        "owner": owner,
        "key_id": key_id_of_pem(public_pem),
        "public_key": public_pem,
    }


def _apply(entries: dict[str, TrustEntry], change: dict[str, Any]) -> dict[str, TrustEntry]:
    out = dict(entries)
    op = change["op"]
    if op == "add":
        entry = TrustEntry(**change["entry"], added_at=change["time"], changed_at=change["time"])
        if entry.role not in ROLES or entry.name in out:
            raise ValueError(f"bad add of '{entry.name}'")
        if entry.key_id != key_id_of_pem(entry.public_key):
            raise ValueError(f"key id of '{entry.name}' does not match its key")
        if entry.key_type not in KEY_TYPES or (entry.key_type == X25519) != (
            entry.public_key.startswith("age1") and entry.role == "serving"
        ):
            raise ValueError(f"'{entry.name}': key type {entry.key_type!r} does not fit its key")
        out[entry.name] = entry
    elif op in ("revoke", "retire"):
        name = change["name"]
        status = "revoked" if op == "revoke" else "retired"
        out[name] = replace(
            out[name], status=status, changed_at=change["time"], reason=change.get("reason", "")
        )
    else:
        raise ValueError(f"unknown op '{op}'")
    return out
