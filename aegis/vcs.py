"""Thin, explicit wrappers over the ``git`` and ``dvc`` command lines.

Both run as subprocesses in the workspace root with analytics off, so
failures surface as one clear error instead of a library traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
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


def head_commit(root: Path) -> str:
    """Returns the current commit id, or an empty string before the first commit."""
    return git(root, "rev-parse", "--verify", "-q", "HEAD", check=False).strip()


def commit_paths(root: Path, message: str, paths: list[str]) -> str:
    """Stages ``paths`` and commits only them; returns the new commit id.

    Does nothing (returns the current commit) when they did not change.
    """
    git(root, "add", "--", *paths)
    staged = git(root, "diff", "--cached", "--name-only", "--", *paths).strip()
    if not staged:
        return head_commit(root)
    git(root, "commit", "-q", "-m", message, "--", *paths)
    return head_commit(root)
