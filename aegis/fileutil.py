"""Small file helpers: atomic writes, an exclusive lock, strict JSON objects."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Writes ``data`` to ``path`` through a temporary file and ``rename``.

    Readers see either the old or the new content, never a partial file.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive ``fcntl.flock`` on ``path`` for the ``with`` block.

    Hold it only around short writes, never across a wait for a person.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def json_object(data: bytes, *, check: str, what: str) -> dict[str, Any]:
    """Parses ``data`` as a JSON object, refusing anything else under ``check``.

    Raises:
        RefusedError: Not JSON, or not an object (``{check}: {what} is not ...``).
    """
    from aegis.errors import RefusedError

    try:
        parsed = json.loads(data)
    except ValueError:
        raise RefusedError(check, f"{what} is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise RefusedError(check, f"{what} is not a JSON object")
    return parsed
