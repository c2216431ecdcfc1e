"""Recording a pipeline stage that Aegis ran itself (not through ``dvc repro``).

The flow calls the same functions as ``aegis stage NAME`` and then records
the run the way ``dvc repro`` would: ``dvc commit`` hashes the stage's
outputs into the cache and ``dvc.lock``, and Aegis commits the lock file,
the uncached metrics and other small evidence to git (with the audit anchor).
"""

from __future__ import annotations

from aegis import storage, vcs
from aegis.config import read_config_yaml
from aegis.errors import ConfigError
from aegis.ledger import Ledger
from aegis.workspace import Workspace


def require_stage(ws: Workspace, name: str) -> None:
    """The stages run only for datasets listed in ``pipeline.datasets``, from a readable dvc.yaml.

    Checked before a stage writes or audits anything: a ``dvc.yaml`` that DVC
    cannot read would otherwise fail the ``dvc commit`` after the stage's
    outputs were written and its audit entry appended.

    Raises:
        ConfigError: ``name`` is not listed (no ``dvc.yaml`` stage would track
            its outputs), or ``dvc.yaml`` is not YAML with a ``stages`` mapping.
    """
    if name not in ws.params().pipeline.datasets:
        raise ConfigError(
            f"'{name}' is not in pipeline.datasets in params.yaml; add it so the "
            "stages (dvc.yaml) track its outputs"
        )
    stages = read_config_yaml(ws.root / "dvc.yaml")
    if not isinstance(stages, dict) or not isinstance(stages.get("stages"), dict):
        raise ConfigError("dvc.yaml: has no 'stages' mapping (restore it from git)")


def commit_stage(ledger: Ledger, stage: str, *, evidence: list[str], message: str) -> str:
    """``dvc commit`` one stage, then git-commit ``dvc.lock`` and ``evidence``.

    Args:
        ledger: The workspace's ledger (the commit carries its audit anchor).
        stage: The stage address, e.g. ``validate@digits``.
        evidence: Workspace-relative paths committed to git with the lock.
        message: The commit message.

    Returns:
        The commit id.
    """
    ws = ledger.ws
    with ledger.locked():
        vcs.dvc(ws.root, "commit", "-f", "-q", stage)
        paths = ["dvc.lock", *evidence]
        paths += [
            p
            for p in vcs.git(ws.root, "ls-files", "-o", "--exclude-standard").split()
            if p.endswith(".gitignore")
        ]
        return ledger.commit(message, [p for p in paths if (ws.root / p).exists()])


def push_stage(ws: Workspace, stage: str) -> None:
    """Pushes the stage's cached outputs to the DVC remote, encrypted at rest on S3.

    Raises:
        TransientIOError: The push failed (retried by callers).
        RefusedError: ``sse``: the remote did not store them as ``storage`` asks.
    """
    storage.push(ws, stage)
