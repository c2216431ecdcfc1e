"""Tasks of the ingest step: stage (I/O), verify, store, push (I/O)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from aegis.data import ingest as core
from aegis.data.sources import StagedSource
from aegis.errors import TransientIOError
from aegis.workspace import Workspace


def retry_on_io_only(task, task_run, state) -> bool:
    """Prefect retry condition: retry transient I/O errors, never a refusal."""
    try:
        state.result()
    except TransientIOError:
        return True
    except Exception:
        return False
    return False


@task(retries=3, retry_delay_seconds=2, retry_condition_fn=retry_on_io_only, cache_policy=NO_CACHE)
def stage_dataset(workspace: str, source: str, staging: str) -> StagedSource:
    """Copies the source (directory or S3) into staging."""
    return core.stage(Workspace(Path(workspace)), source, Path(staging))


@task(cache_policy=NO_CACHE)
def verify_dataset(workspace: str, staged: StagedSource, name: str) -> core.VerifiedDataset:
    """Checks signature, signer, files and manifest of the staged copy."""
    return core.verify_staged(Workspace(Path(workspace)), staged, name=name)


@task(cache_policy=NO_CACHE)
def store_dataset(
    workspace: str, verified: core.VerifiedDataset, actor: str, allow_older: bool
) -> core.IngestResult:
    """Versions the verified dataset with DVC, commits and audits it."""
    return core.store(Workspace(Path(workspace)), verified, actor=actor, allow_older=allow_older)


@task(retries=3, retry_delay_seconds=2, retry_condition_fn=retry_on_io_only, cache_policy=NO_CACHE)
def push_dataset(workspace: str, name: str) -> None:
    """Pushes the dataset's DVC version to the remote."""
    core.push(Workspace(Path(workspace)), name)
