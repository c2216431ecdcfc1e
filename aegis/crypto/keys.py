"""ECDSA P-256 key pairs, key ids, and detached signatures over JSON.

A key id is the hex SHA-256 of the PEM SubjectPublicKeyInfo: the same value
model_signing writes as the public-key hint of a bundle, so a bundle names
the key that signed it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aegis.errors import RefusedError, UsageError


def canonical_json(data: Any) -> bytes:
    """Serializes ``data`` deterministically (sorted keys, no spaces, UTF-8)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def public_pem(public_key: ec.EllipticCurvePublicKey) -> str:
    """Returns the PEM SubjectPublicKeyInfo text of a public key."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def key_id_of_pem(pem: str) -> str:
    """Returns the key id (hex SHA-256 of the PEM public key, as model_signing hints)."""
    return hashlib.sha256(pem.encode()).hexdigest()


@dataclass(frozen=True)
class PrivateKey:
    """A loaded private key and where it came from."""

    path: Path
    key: ec.EllipticCurvePrivateKey

    @property
    def public_pem(self) -> str:
        return public_pem(self.key.public_key())

    @property
    def key_id(self) -> str:
        return key_id_of_pem(self.public_pem)

    def sign(self, data: bytes) -> str:
        """Signs ``data`` (ECDSA P-256, SHA-256) and returns base64 text."""
        return base64.b64encode(self.key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()


def generate_key(path: Path) -> PrivateKey:
    """Creates a P-256 key pair: ``path`` (PEM, mode 0600) and ``path.pub``.

    Refuses to overwrite an existing key file.

    Raises:
        UsageError: ``path`` or its ``.pub`` already exists, or the folder is missing.
    """
    pub_path = path.with_name(path.name + ".pub")
    for p in (path, pub_path):
        if p.exists() or p.is_symlink():
            raise UsageError(f"{p}: already exists; refusing to overwrite a key")
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent}: no such directory")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # O_EXCL + 0600 from the start: the private key is never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub_path.write_text(public_pem(key.public_key()))
    return PrivateKey(path=path, key=key)


def load_private_key(path: Path) -> PrivateKey:
    """Loads a PEM private key written by :func:`generate_key`.

    A key that group or others may read is refused, as ssh refuses one: a
    private key readable by other users of the machine signs for them too.

    Raises:
        UsageError: The file is missing, unreadable, not a PEM key, or not P-256.
        RefusedError: ``key-permissions``: the file is readable by group or others.
    """
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{path}: cannot read key (not a regular file)")
        if info.st_size > 64 * 1024:
            raise UsageError(f"{path}: too large to be a private key")
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: key file not found") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read key ({exc.strerror})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise UsageError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise UsageError(f"{path}: not an ECDSA P-256 key")
    if info.st_mode & 0o077:
        raise RefusedError(
            "key-permissions",
            f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"a private key must be mode 0600: chmod 600 {path}",
        )
    return PrivateKey(path=path, key=key)


def verify_signature(public_key_pem: str, data: bytes, signature_b64: str) -> bool:
    """Checks a base64 ECDSA P-256 signature over ``data``; never raises on bad input."""
    try:
        public_key = serialization.load_pem_public_key(public_key_pem.encode())
        signature = base64.b64decode(signature_b64, validate=True)
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            return False  # not ``assert``: it vanishes under ``python -O``
        public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError, AttributeError):
        return False
    return True


def require_signature(public_key_pem: str, data: bytes, signature_b64: str, *, what: str) -> None:
    """Like :func:`verify_signature` but raises ``RefusedError('signature', ...)``."""
    if not verify_signature(public_key_pem, data, signature_b64):
        raise RefusedError("signature", f"{what}: signature does not verify")
