"""Recording a pipeline stage that Aegis ran itself (not through ``dvc repro``).

The flow calls the same functions as ``aegis stage NAME`` and then records
the run the way ``dvc repro`` would: ``dvc commit`` hashes the stage's
outputs into the cache and ``dvc.lock``, and Aegis commits the lock file,
the uncached metrics and other small evidence to git.
"""

from __future__ import annotations

from aegis import vcs
from aegis.workspace import Workspace


def commit_stage(ws: Workspace, stage: str, *, evidence: list[str], message: str) -> str:
    """``dvc commit`` one stage, then git-commit ``dvc.lock`` and ``evidence``.

    Args:
        ws: The workspace.
        stage: The stage address, e.g. ``validate@digits``.
        evidence: Workspace-relative paths committed to git with the lock.
        message: The commit message.

    Returns:
        The commit id.
    """
    with ws.lock():
        vcs.dvc(ws.root, "commit", "-f", "-q", stage)
        paths = ["dvc.lock", *evidence]
        paths += [
            p
            for p in vcs.git(ws.root, "ls-files", "-o", "--exclude-standard").split()
            if p.endswith(".gitignore")
        ]
        return vcs.commit_paths(ws.root, message, [p for p in paths if (ws.root / p).exists()])


def push_stage(ws: Workspace, stage: str) -> None:
    """Pushes the stage's cached outputs to the DVC remote (I/O: TransientIOError)."""
    vcs.dvc(ws.root, "push", "-q", stage, io=True)
