"""Thin, explicit wrappers over the ``git`` and ``dvc`` command lines.

Both run as subprocesses in the workspace root with analytics off, so
failures surface as one clear error instead of a library traceback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from aegis.errors import ConfigError, TransientIOError

_QUIET_ENV = {"DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1", "GIT_TERMINAL_PROMPT": "0"}


def _env() -> dict[str, str]:
    return {**os.environ, **_QUIET_ENV}


def git(root: Path, *args: str, check: bool = True) -> str:
    """Runs ``git -C root ARGS`` and returns its stdout.

    Raises:
        ConfigError: git failed (its last stderr line is in the message).
    """
    proc = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, env=_env()
    )
    if check and proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"git {args[0]} failed: {detail}")
    return proc.stdout


def dvc(root: Path, *args: str, io: bool = False) -> str:
    """Runs ``dvc ARGS`` (from this environment) in ``root`` and returns stdout.

    Args:
        root: The workspace root.
        args: DVC arguments.
        io: True when the command talks to a remote; its failure is then a
            :class:`TransientIOError` (retried by callers) instead of a
            configuration error.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env=_env(),
    )
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).strip().splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")]
        detail = (errors or lines or ["no output"])[-1]
        cls = TransientIOError if io else ConfigError
        raise cls(f"dvc {args[0]} failed: {detail}")
    return proc.stdout


def committed_bytes(root: Path, path: str) -> bytes | None:
    """The bytes of ``path`` as HEAD holds it, or None if HEAD does not (read-only: no index)."""
    proc = subprocess.run(
        ["git", "-C", str(root), "cat-file", "blob", f"HEAD:{path}"],
        capture_output=True, env=_env(),
    )  # fmt: skip
    return proc.stdout if proc.returncode == 0 else None


def head_commit(root: Path) -> str:
    """Returns the current commit id, or an empty string before the first commit."""
    return git(root, "rev-parse", "--verify", "-q", "HEAD", check=False).strip()


def commit_paths(root: Path, message: str, paths: list[str], *, trailer: str | None = None) -> str:
    """Stages ``paths`` and commits only them; returns the new commit id.

    Does nothing (returns the current commit) when they did not change.

    Args:
        root: The repository.
        message: The commit message.
        paths: Repository-relative paths to stage and commit.
        trailer: A trailer line appended to the message (the audit anchor).
    """
    git(root, "add", "--", *paths)
    staged = git(root, "diff", "--cached", "--name-only", "--", *paths).strip()
    if not staged:
        return head_commit(root)
    git(root, "commit", "-q", "-m", with_trailer(message, trailer), "--", *paths)
    return head_commit(root)


def commit_empty(root: Path, message: str, *, trailer: str | None = None) -> str:
    """An empty commit (nothing staged is included); returns its id."""
    git(root, "commit", "-q", "--allow-empty", "--only", "-m", with_trailer(message, trailer))
    return head_commit(root)


# -- audit anchors: where git records how long the audit log was ---------------------------

ANCHOR_KEY = "Aegis-Audit"
_ANCHOR_VALUE = re.compile(r"([0-9]{1,12}) ([0-9a-f]{64})")


@dataclass(frozen=True)
class Anchor:
    """An audit entry (sequence number and hash) that git recorded, and where."""

    seq: int
    hash: str
    where: str  # "commit 1a2b3c4d5e" or "tag digits-model#prod#3"


def anchor_line(seq: int, entry_hash: str) -> str:
    """The trailer line that anchors audit entry ``seq`` in a commit or tag message."""
    return f"{ANCHOR_KEY}: {seq} {entry_hash}"


def with_trailer(message: str, trailer: str | None) -> str:
    return message if not trailer else f"{message.rstrip()}\n\n{trailer}\n"


def audit_anchors(root: Path) -> list[Anchor]:
    """Every audit anchor in the trailers of all commits and annotated tags.

    Git's own trailer parsing reads only a message's last paragraph, which
    :func:`with_trailer` makes Aegis's: text quoted earlier in a message (a
    supplier's, an operator's) cannot plant an anchor, and a trailer a hook
    adds after ours (``Signed-off-by``, ``Change-Id``) does not hide it.

    Returns an empty list for a repository without commits.
    """
    options = f"key={ANCHOR_KEY},valueonly,separator=%x1f"
    commits = git(root, "log", "--all", f"--format=%H%x00%(trailers:{options})%x1e", check=False)
    tags = git(
        root, "for-each-ref", "refs/tags",
        f"--format=%(refname:strip=2)%00%(contents:trailers:{options})%1e", check=False,
    )  # fmt: skip
    found: list[Anchor] = []
    for text, kind, width in ((commits, "commit", 10), (tags, "tag", None)):
        for record in text.split("\x1e"):
            name, _, values = record.strip("\n").partition("\x00")
            for value in values.split("\x1f"):
                if match := _ANCHOR_VALUE.fullmatch(value.strip()):
                    where = f"{kind} {name[:width] if width else name}"
                    found.append(Anchor(int(match[1]), match[2], where))
    return found
