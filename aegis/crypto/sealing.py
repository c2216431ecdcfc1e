"""Serving identities: X25519 key pairs in the age format, and sealing bytes to them.

A serving identity does not sign: it opens sealed exports (:mod:`aegis.registry.seal`),
the release encrypted to one or more identities with age (``pyrage``: X25519, ChaCha20-
Poly1305, a MAC over the header). Its public half is an age *recipient* (``age1...``),
kept in the trust store as the entry's public key; its key id is the hex SHA-256 of that
recipient string, as a P-256 key's is of its PEM text.

The identity file is what ``age-keygen`` writes (comment lines, then one
``AGE-SECRET-KEY-1...`` line), mode 0600, with the recipient in ``PATH.pub``, so
``age -d -i PATH`` opens a sealed archive without Aegis.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pyrage
from pyrage import x25519

from aegis.errors import RefusedError, UsageError
from aegis.fileutil import read_regular
from aegis.timeutil import utc_now

KEY_TYPE = "x25519"
RECIPIENT_PREFIX = "age1"
SECRET_PREFIX = "AGE-SECRET-KEY-1"
KEY_FILE_LIMIT = 64 * 1024


def recipient_key_id(recipient: str) -> str:
    """The key id of an age recipient: the hex SHA-256 of its text."""
    return hashlib.sha256(recipient.encode()).hexdigest()


def normalized_recipient(text: str) -> str:
    """The age X25519 recipient ``text`` spells, in its one canonical (lower-case) form.

    Raises:
        UsageError: Not an ``age1...`` X25519 recipient.
    """
    text = text.strip()
    if not text.lower().startswith(RECIPIENT_PREFIX) or len(text) > 200:
        raise UsageError(f"{text[:24]!r}: not an age X25519 recipient (age1...)")
    try:
        return str(x25519.Recipient.from_str(text.lower()))
    except pyrage.RecipientError:
        raise UsageError(f"{text[:24]!r}...: not a valid age X25519 recipient") from None


def read_recipient_file(path: Path) -> str:
    """The one recipient in ``path`` (``PATH.pub`` as ``aegis keys new`` writes it).

    Comment and blank lines are skipped, as age does in a recipients file.

    Raises:
        UsageError: Missing, unreadable, or not exactly one X25519 recipient.
    """
    try:
        text = read_regular(path, limit=KEY_FILE_LIMIT, what=str(path)).decode("utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: recipient file not found") from None
    except (OSError, UnicodeDecodeError, RefusedError) as exc:
        raise UsageError(f"{path}: cannot read a recipient ({exc})") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1:
        raise UsageError(f"{path}: holds {len(lines)} recipients; one per file")
    return normalized_recipient(lines[0])


@dataclass(frozen=True)
class ServingIdentity:
    """A loaded X25519 identity (the private half) and where it came from."""

    path: Path
    identity: x25519.Identity

    @property
    def recipient(self) -> str:
        return str(self.identity.to_public())

    @property
    def key_id(self) -> str:
        return recipient_key_id(self.recipient)


def generate_identity(path: Path) -> ServingIdentity:
    """Creates an X25519 identity: ``path`` (age-keygen format, mode 0600) and ``path.pub``.

    Raises:
        UsageError: ``path`` or its ``.pub`` already exists, or the folder is missing.
    """
    pub_path = path.with_name(path.name + ".pub")
    for p in (path, pub_path):
        if p.exists() or p.is_symlink():
            raise UsageError(f"{p}: already exists; refusing to overwrite a key")
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent}: no such directory")
    identity = x25519.Identity.generate()
    recipient = str(identity.to_public())
    body = f"# created: {utc_now()}\n# public key: {recipient}\n{identity}\n"
    # O_EXCL + 0600 from the start: the identity is never readable by others
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(body)
    pub_path.write_text(recipient + "\n")
    return ServingIdentity(path=path, identity=identity)


def load_identity(path: Path) -> ServingIdentity:
    """Loads an age X25519 identity file (as :func:`generate_identity` or age-keygen writes it).

    Raises:
        UsageError: Missing, unreadable, or not exactly one X25519 identity.
        RefusedError: ``key-permissions``: group or others may read it.
    """
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{path}: cannot read identity (not a regular file)")
        data = read_regular(path, limit=KEY_FILE_LIMIT, what=str(path))
    except FileNotFoundError:
        raise UsageError(f"{path}: identity file not found") from None
    except RefusedError as exc:
        raise UsageError(exc.detail) from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read identity ({exc.strerror})") from None
    try:
        lines = [ln.strip() for ln in data.decode("ascii").splitlines()]
    except UnicodeDecodeError:
        lines = []
    secrets = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(secrets) != 1 or not secrets[0].startswith(SECRET_PREFIX):
        raise UsageError(
            f"{path}: not an age X25519 identity (serving identities are made with "
            "`aegis keys new --role serving --type x25519`)"
        )
    try:
        identity = x25519.Identity.from_str(secrets[0])
    except pyrage.IdentityError:
        raise UsageError(f"{path}: not a valid age X25519 identity") from None
    if info.st_mode & 0o077:
        raise RefusedError(
            "key-permissions",
            f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"an identity must be mode 0600: chmod 600 {path}",
        )
    return ServingIdentity(path=path, identity=identity)


def seal(data: bytes, recipients: list[str]) -> bytes:
    """Encrypts ``data`` to every recipient (age v1, binary)."""
    if not recipients:
        raise UsageError("sealing needs at least one recipient")
    return pyrage.encrypt(data, [x25519.Recipient.from_str(r) for r in recipients])


def unseal(data: bytes, identity: ServingIdentity, *, what: str) -> bytes:
    """Decrypts an age archive with ``identity``, in memory.

    Raises:
        RefusedError: ``seal``: not sealed to this identity, or the archive was changed
            (age authenticates its header and every 64 KiB chunk).
    """
    try:
        return pyrage.decrypt(data, [identity.identity])
    except pyrage.DecryptError as exc:
        if "no matching keys" in str(exc).lower():
            raise RefusedError(
                "seal", f"{what} is not sealed to identity {identity.key_id[:12]} ({identity.path})"
            ) from None
        raise RefusedError(
            "seal", f"{what} does not decrypt ({exc}): changed or truncated since it was sealed"
        ) from None
