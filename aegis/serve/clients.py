"""API clients of the gateway: bearer tokens, their scopes and limits, in a signed list.

A token is 256 random bits (``aegis_`` + 43 base64url characters), shown once. The
list stores only ``HMAC-SHA256(secret, token)``: a slow password hash would cost tens
of milliseconds per request against a one-millisecond budget, and a 256-bit random
token needs no stretching; the server secret (``.aegis/keys/api-clients.secret``, mode
0600, never committed) means a leaked list (it is committed) does not even allow an
offline check of a guess.

The list is a document signed by the operator who last changed it, kept inside its
audit entry (``api.clients``), like every decision: :func:`load_clients` reads the last
such entry, so a planted, edited or older file (one from before a revocation) changes
nothing. ``.aegis/api-clients.json`` is its copy for people and git history.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aegis.crypto.documents import body_digest, verify_document
from aegis.errors import RefusedError, UsageError
from aegis.ledger import Action, Ledger
from aegis.workspace import Workspace

KIND = "aegis-api-clients/1"
TOKEN_PREFIX = "aegis_"
SCOPES = ("predict", "admin")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TOKEN = re.compile(r"^aegis_[A-Za-z0-9_-]{43}$")
_RATE = re.compile(r"^([1-9][0-9]{0,9})/(s|m|h|day)$")
PERIODS = {"s": 1, "m": 60, "h": 3600, "day": 86400}


def list_path(ws: Workspace) -> Path:
    """Where the signed client list lives (beside the trust store)."""
    return ws.aegis_dir / "api-clients.json"


def secret_path(ws: Workspace) -> Path:
    """The server secret tokens are hashed under (with the private keys, never committed)."""
    return ws.keys_dir / "api-clients.secret"


@dataclass(frozen=True)
class Limit:
    """``count`` rows per ``seconds`` (a fixed window)."""

    count: int
    seconds: int

    def __str__(self) -> str:
        unit = next(u for u, s in PERIODS.items() if s == self.seconds)
        return f"{self.count}/{unit}"


def parse_limit(text: str, *, what: str) -> Limit:
    """``20/s``, ``600/m``, ``5000/h`` or ``10000/day``.

    Raises:
        UsageError: Anything else.
    """
    match = _RATE.fullmatch(text.strip())
    if not match:
        raise UsageError(f"{what} '{text}': a limit is N/s, N/m, N/h or N/day (rows)")
    return Limit(count=int(match.group(1)), seconds=PERIODS[match.group(2)])


def check_name(name: str) -> str:
    """Refuses a client name that could not be a log field or a metric label safely."""
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"'{name}': client names are 1-64 letters, digits, '.', '_' and '-', starting "
            "with a letter or digit"
        )
    return name


def parse_scopes(text: str) -> tuple[str, ...]:
    """``predict``, ``admin`` or ``predict,admin``.

    Raises:
        UsageError: An unknown or empty scope.
    """
    scopes = sorted({s.strip() for s in text.split(",")})
    bad = [s for s in scopes if s not in SCOPES]
    if not scopes or bad:
        raise UsageError(f"--scopes '{text}': scopes are {', '.join(SCOPES)} (comma-separated)")
    return tuple(scopes)


@dataclass(frozen=True)
class Client:
    """One API client as the signed list holds it."""

    name: str
    id: str  # what logs and metrics name (never the token)
    scopes: tuple[str, ...]
    rate: Limit
    quota: Limit
    token_hash: str
    created: str
    created_by: str
    status: str = "active"  # or "revoked"
    revoked: str | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "id": self.id, "scopes": list(self.scopes),
            "rate": str(self.rate), "quota": str(self.quota), "token_hash": self.token_hash,
            "created": self.created, "created_by": self.created_by, "status": self.status,
            "revoked": self.revoked, "reason": self.reason,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Any) -> Client:
        """Rebuilds a client from the list (a malformed entry is ``ValueError``)."""
        try:
            client = cls(
                name=check_name(data["name"]),
                id=str(data["id"]),
                scopes=parse_scopes(",".join(data["scopes"])),
                rate=parse_limit(data["rate"], what="rate"),
                quota=parse_limit(data["quota"], what="quota"),
                token_hash=str(data["token_hash"]),
                created=str(data["created"]),
                created_by=str(data["created_by"]),
                status=str(data["status"]),
                revoked=data["revoked"],
                reason=str(data["reason"]),
            )
        except (KeyError, TypeError, UsageError) as exc:
            raise ValueError(f"malformed client entry ({exc})") from None
        if client.status not in ("active", "revoked") or not re.fullmatch(
            r"[0-9a-f]{64}", client.token_hash
        ):
            raise ValueError(f"malformed client entry '{client.name}'")
        return client


@dataclass(frozen=True)
class ClientList:
    """The verified client list: look a token up by its keyed hash."""

    clients: tuple[Client, ...]
    digest: str | None  # None: no list yet
    serial: int
    signer: str | None
    signer_revoked: bool = False  # only from load_clients(adopt=True)

    def by_hash(self) -> dict[str, Client]:
        return {c.token_hash: c for c in self.clients}

    def get(self, name: str) -> Client | None:
        return next((c for c in self.clients if c.name == name), None)


EMPTY = ClientList(clients=(), digest=None, serial=0, signer=None)


def new_token() -> str:
    """A fresh bearer token: 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def looks_like_token(text: str) -> bool:
    return bool(_TOKEN.fullmatch(text))


def token_hash(secret: bytes, token: str) -> str:
    """The keyed hash the list stores for ``token``."""
    return hmac.new(secret, token.encode(), hashlib.sha256).hexdigest()


def read_secret(ws: Workspace, *, create: bool = False) -> bytes:
    """The server secret tokens are hashed under (created on first use when ``create``)."""
    return read_hex_secret(secret_path(ws), create=create, what="API client secret",
                           missing="create a client first")  # fmt: skip


def read_hex_secret(path: Path, *, create: bool, what: str, missing: str) -> bytes:
    """A 256-bit secret kept as hex in a 0600 file of the keys directory.

    Raises:
        UsageError: Missing (and not ``create``), not a regular file, or malformed.
        RefusedError: ``key-permissions``: readable by group or others.
    """
    if create and not path.exists():
        path.parent.mkdir(mode=0o700, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it meanwhile: read theirs
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: no {what} ({missing})") from None
    if not stat.S_ISREG(info.st_mode) or info.st_size > 1024:
        raise UsageError(f"{path}: not the {what} (not a small regular file)")
    if info.st_mode & 0o077:
        raise RefusedError(
            "key-permissions",
            f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o}): chmod 600",
        )
    text = path.read_text().strip()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise UsageError(f"{path}: malformed {what}")
    return bytes.fromhex(text)


def load_clients(ledger: Ledger, *, adopt: bool = False) -> ClientList:
    """The verified client list: the signed document of the last ``api.clients`` entry.

    Empty when no client was ever made. The file ``.aegis/api-clients.json`` is a copy
    for people and git history; it is never read to decide. With ``adopt``, a list whose
    operator was revoked since is returned (its signature still verified), so that an
    operator in good standing can revoke clients from it or re-sign it: nothing else
    may read it.

    Raises:
        RefusedError: ``api-clients``: the recorded list does not verify, is malformed,
            or is signed by anyone but an operator in good standing (a revoked
            operator's list no longer counts).
    """
    entries = ledger.log.by_action(Action.API_CLIENTS)
    if not entries:
        return EMPTY
    entry = entries[-1]
    try:
        signed = verify_document(entry.details.get("signed"), kind=KIND, trust=ledger.trust)
    except RefusedError as exc:
        raise RefusedError("api-clients", f"audit entry {entry.seq}: {exc.detail}") from None
    revoked = signed.signer.status == "revoked"
    if signed.signer.role != "operator" or (revoked and not adopt):
        raise RefusedError(
            "api-clients",
            f"the client list is signed by '{signed.signer.name}', not an operator in good "
            "standing; an operator reviews and re-signs it: aegis keys api resign",
        )
    try:
        clients = tuple(Client.from_json(c) for c in signed.body["clients"])
        serial = int(signed.body["serial"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RefusedError("api-clients", f"audit entry {entry.seq}: {exc}") from None
    signer = signed.signer.name
    return ClientList(
        clients=clients, digest=signed.digest, serial=serial, signer=signer,
        signer_revoked=revoked,
    )  # fmt: skip


def list_body(clients: list[Client], *, serial: int, previous: str | None) -> dict[str, Any]:
    """The body of a client list document."""
    return {
        "kind": KIND,
        "serial": serial,
        "previous": previous,
        "clients": [c.to_json() for c in clients],
    }


def retry_after(seconds: float) -> int:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return max(1, math.ceil(seconds))


__all__ = ["EMPTY", "KIND", "Client", "ClientList", "Limit", "body_digest", "load_clients"]
