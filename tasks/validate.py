"""Tasks of the validation step: check (before storing), write, record, push (I/O)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from aegis.data import validate as core
from aegis.data.ingest import VerifiedDataset
from aegis.registry.stages import push_stage
from aegis.workspace import Workspace
from tasks.ingest import retry_on_io_only


@task(cache_policy=NO_CACHE)
def check_dataset(workspace: str, verified: VerifiedDataset) -> core.CheckedDataset:
    """Runs the suite, quarantine and drift gates on the verified staged copy."""
    ws = Workspace(Path(workspace))
    return core.check_dataset(ws, verified.name, core.read_frame(verified), verified.digest)


@task(cache_policy=NO_CACHE)
def write_validation(
    workspace: str, checked: core.CheckedDataset, actor: str
) -> core.ValidationResult:
    """Writes quarantine, result, report and profile; audits the result."""
    return core.write_validation(Workspace(Path(workspace)), checked, actor=actor)


@task(cache_policy=NO_CACHE)
def record_validation(workspace: str, result: core.ValidationResult) -> str:
    """``dvc commit``s the validate stage and commits the evidence to git."""
    return core.record_validation(Workspace(Path(workspace)), result)


@task(retries=3, retry_delay_seconds=2, retry_condition_fn=retry_on_io_only, cache_policy=NO_CACHE)
def push_validation(workspace: str, name: str) -> None:
    """Pushes the quarantine and report to the DVC remote."""
    push_stage(Workspace(Path(workspace)), f"validate@{name}")
