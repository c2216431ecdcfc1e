"""Hashing a signed directory and comparing it with what its bundle signs.

The bundle is model_signing's own format, so anyone can check a dataset
or release with ``model_signing verify key`` and the public key. Hashing
covers every file (``ignore_git_paths=False``) except the bundle itself.

Verification mirrors ``model_signing.verifying.Config.verify`` step by step
(check the bundle signature: :func:`aegis.crypto.signing.verify_bundle`;
hash the directory once; compare manifests) so that a failure can name the
exact file and reason.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from model_signing import hashing

from aegis.errors import RefusedError, UnsafeFileError
from aegis.fileutil import read_regular


@dataclass(frozen=True)
class SignedDigests:
    """What a verified bundle vouches for: file name -> hex SHA-256."""

    key_id: str
    files: dict[str, str]


def hashing_config(ignored: list[str]) -> hashing.Config:
    """SHA-256 per file, symlinks refused, git paths *not* ignored; ``ignored`` left out."""
    return (
        hashing.Config()
        .use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False)
        .set_ignored_paths(paths=ignored, ignore_git_paths=False)
    )


def read_bundle_key_id(bundle_path: Path) -> str:
    """Returns the signer's key id (the bundle's public-key hint), unverified.

    Raises:
        RefusedError: ``bundle`` check: the bundle is not JSON or lacks a hint.
    """
    try:
        data = json.loads(read_regular(bundle_path, limit=64 * 1024 * 1024, what=bundle_path.name))
        hint = data["verificationMaterial"]["publicKey"]["hint"]
    except UnsafeFileError as exc:
        raise RefusedError("bundle", exc.detail) from None
    except FileNotFoundError:
        raise RefusedError("bundle", f"signature bundle '{bundle_path.name}' is missing") from None
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        raise RefusedError(
            "bundle", f"'{bundle_path.name}' is not valid JSON (truncated?)"
        ) from None
    except (KeyError, TypeError):
        raise RefusedError("bundle", f"'{bundle_path.name}' names no signing key") from None
    if not isinstance(hint, str) or len(hint) != 64:
        raise RefusedError("bundle", f"'{bundle_path.name}' has a malformed key hint")
    return hint


def hash_directory(directory: Path, *, ignored: list[str]) -> dict[str, str]:
    """Hashes each file once (model_signing's file serializer, in parallel).

    Raises:
        RefusedError: ``file-set``: the directory holds a symlink or a special
            file (model_signing refuses both), or a file cannot be read.
    """
    try:
        manifest = hashing_config(ignored).hash(directory)
    except ValueError:  # model_signing refuses a symlink, FIFO, socket or device
        raise RefusedError(
            "file-set", f"'{_first_special(directory)}' is a symlink or not a regular file"
        ) from None
    except OSError as exc:
        where = Path(exc.filename).name if exc.filename else directory.name
        raise RefusedError(
            "file-set", f"cannot read '{where}' ({exc.strerror or type(exc).__name__})"
        ) from None
    return {str(rd.identifier): rd.digest.digest_hex for rd in manifest.resource_descriptors()}


def _first_special(directory: Path) -> str:
    """The first entry under ``directory`` that is a symlink or neither file nor directory."""
    for root, dirs, files in os.walk(directory):
        for name in sorted(dirs + files):
            path = Path(root) / name
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                return str(path.relative_to(directory))
    return directory.name


def compare_digests(signed: dict[str, str], actual: dict[str, str]) -> None:
    """Refuses unless ``actual`` holds exactly the signed files with the signed hashes.

    Raises:
        RefusedError: ``file-set`` (missing, extra, renamed) or ``integrity``.
    """
    missing = sorted(set(signed) - set(actual))
    extra = sorted(set(actual) - set(signed))
    if missing and extra:
        raise RefusedError(
            "file-set", f"files renamed or replaced: missing {missing}, unexpected {extra}"
        )
    if missing:
        raise RefusedError("file-set", f"signed file(s) missing: {', '.join(missing)}")
    if extra:
        raise RefusedError(
            "file-set", f"unexpected file(s) not in the signature: {', '.join(extra)}"
        )
    for name in sorted(signed):
        if signed[name] != actual[name]:
            raise RefusedError("integrity", f"'{name}' does not match its signed SHA-256")
