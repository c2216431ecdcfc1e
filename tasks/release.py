"""Tasks of the release step: build and register the signed release, push it (I/O)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from aegis.registry import release as core
from aegis.workspace import Workspace
from tasks.ingest import retry_on_io_only


@task(cache_policy=NO_CACHE)
def build_release(workspace: str, name: str, actor: str) -> core.Release:
    """Signs models/<name> with its evidence as releases/<model>/v<N>, commits and tags it."""
    return core.build_release(Workspace(Path(workspace)), name, actor=actor)


@task(retries=3, retry_delay_seconds=2, retry_condition_fn=retry_on_io_only, cache_policy=NO_CACHE)
def push_release(workspace: str, release: core.Release) -> None:
    """Pushes the release directory to the DVC remote."""
    core.push_release(Workspace(Path(workspace)), release)
