"""Small file helpers: safe reads, atomic writes, a re-entrant exclusive lock, strict JSON.

Every reader of a workspace file goes through :func:`read_regular`: anyone who
can write the workspace can plant a symlink to ``/dev/zero``, a FIFO or a huge
file where Aegis expects a small JSON document, and a plain ``read_bytes()``
would then hang or exhaust memory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aegis.errors import RefusedError, UnsafeFileError

KIB = 1024
MIB = 1024 * KIB
# Limits of what Aegis reads from a workspace: far above anything it writes.
DOC_LIMIT = 16 * MIB  # JSON/YAML documents: params, trust store, requests, metrics
REPORT_LIMIT = 256 * MIB  # HTML reports, SBOMs, model files are read by their own limits


def read_regular(path: Path, *, limit: int = DOC_LIMIT, what: str | None = None) -> bytes:
    """Reads a regular file of at most ``limit`` bytes; never follows a final symlink.

    Args:
        path: The file.
        limit: Largest accepted size in bytes.
        what: How to name the file in messages (default: its path).

    Returns:
        The file's bytes.

    Raises:
        FileNotFoundError: There is no such file (callers decide what that means).
        UnsafeFileError: ``file``: a symlink, FIFO, socket, device or directory, or
            larger than ``limit``.
        OSError: Another read error (permissions, I/O).
    """
    name = what or str(path)
    fd = _open_regular(path, name)
    try:
        info = os.fstat(fd)
        if info.st_size > limit:
            raise UnsafeFileError(f"{name} is {info.st_size} bytes, over the {limit}-byte limit")
        chunks, total = [], 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - total) or 1):
            total += len(chunk)
            if total > limit:  # it grew while read
                raise UnsafeFileError(f"{name} grew over the {limit}-byte limit while read")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _open_regular(path: Path, name: str) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)  # O_NONBLOCK: opening a FIFO never waits for a writer
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError(f"{name} is a symbolic link, not a regular file") from None
        if exc.errno == errno.ENAMETOOLONG:
            raise UnsafeFileError(f"{name}: file name too long") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeFileError(f"{name} is not a regular file")
    return fd


def read_tail(path: Path, offset: int, *, limit: int) -> bytes | None:
    """The bytes of a regular file after ``offset``; None if it is shorter than ``offset``.

    A missing file counts as empty. Raises :class:`UnsafeFileError` like
    :func:`read_regular` (not a regular file, or over ``limit`` in all).
    """
    try:
        fd = _open_regular(path, str(path.name))
    except FileNotFoundError:
        return None if offset else b""
    try:
        size = os.fstat(fd).st_size
        if size < offset:
            return None
        if size > limit:
            raise UnsafeFileError(f"{path.name} is {size} bytes, over the {limit}-byte limit")
        os.lseek(fd, offset, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_optional(path: Path, *, limit: int = DOC_LIMIT, what: str | None = None) -> bytes | None:
    """Like :func:`read_regular`, but None when the file does not exist."""
    try:
        return read_regular(path, limit=limit, what=what)
    except FileNotFoundError:
        return None


def is_regular(path: Path) -> bool:
    """Whether ``path`` is a regular file itself (not a symlink to one); never raises."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def ensure_dir(root: Path, path: Path) -> Path:
    """Creates ``path`` (inside ``root``) one component at a time, following no symlink.

    A directory symlink planted at ``validation/`` or ``.aegis/approvals/m``
    would make every write below it land wherever it points, outside the
    workspace or into another stage's outputs; ``mkdir(parents=True)`` follows
    it silently. ``root`` itself may be a symlink (the user's choice).

    Returns:
        ``path``.

    Raises:
        UnsafeFileError: ``path`` leaves ``root``, or one of its components
            below ``root`` is a symlink or not a directory.
    """
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        raise UnsafeFileError(f"{path} is outside {root}") from None
    if ".." in parts:
        raise UnsafeFileError(f"{path} is outside {root}")
    current = root
    for part in parts:
        current = current / part
        try:
            os.mkdir(current)
            continue
        except FileExistsError:
            pass
        info = os.lstat(current)
        if not stat.S_ISDIR(info.st_mode):
            kind = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a directory"
            where = current.relative_to(root)
            raise UnsafeFileError(f"{where} is {kind} where Aegis writes a directory; remove it")
    return path


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Writes ``data`` to ``path`` through a temporary file and ``rename``.

    Readers see either the old or the new content, never a partial file; a
    symlink planted at ``path`` is replaced, never written through.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:100]}.", suffix=".tmp")
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


class _HeldLocks(threading.local):
    def __init__(self) -> None:
        self.depth: dict[str, int] = {}


_HELD = _HeldLocks()


@contextlib.contextmanager
def file_lock(path: Path, *, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Holds an exclusive ``fcntl.flock`` on ``path`` for the ``with`` block.

    Re-entrant within one thread (a nested ``with`` on the same path just
    counts), so a core function may take the lock that its caller holds.
    Hold it only around short writes, never across a wait for a person.

    Args:
        path: The lock file.
        on_wait: Called once if another process holds the lock (then it waits).
    """
    key = os.path.abspath(path)
    if _HELD.depth.get(key):
        _HELD.depth[key] += 1
        try:
            yield
        finally:
            _HELD.depth[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        _HELD.depth[key] = 1
        try:
            yield
        finally:
            del _HELD.depth[key]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def json_object(data: bytes, *, check: str, what: str) -> dict[str, Any]:
    """Parses ``data`` as a JSON object, refusing anything else under ``check``.

    Raises:
        RefusedError: Not JSON, or not an object (``{check}: {what} is not ...``).
    """
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        raise RefusedError(check, f"{what} is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise RefusedError(check, f"{what} is not a JSON object")
    return parsed


def read_json_object(
    path: Path, *, check: str, what: str, limit: int = DOC_LIMIT
) -> dict[str, Any] | None:
    """A JSON object read safely from ``path`` (:func:`read_regular`); None if missing.

    Raises:
        UnsafeFileError: Not a regular file, or too large.
        RefusedError: ``check``: unreadable, not JSON or not an object.
    """
    try:
        data = read_regular(path, limit=limit, what=what)
    except FileNotFoundError:
        return None
    except UnsafeFileError:
        raise
    except OSError as exc:
        raise RefusedError(check, f"{what} cannot be read ({exc.strerror})") from None
    return json_object(data, check=check, what=what)
