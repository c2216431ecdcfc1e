"""The ``retrain`` flow: ingest -> version (validation and training come next)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from aegis.data import ingest as core
from aegis.workspace import Workspace
from tasks.ingest import push_dataset, stage_dataset, store_dataset, verify_dataset


@flow(name="retrain", log_prints=True)
def retrain(
    workspace: str, source: str, name: str, actor: str, allow_older: bool = False
) -> core.IngestResult:
    """Verifies and versions a dataset; later steps extend this flow.

    Args:
        workspace: Workspace root.
        source: Dataset directory or ``s3://bucket/prefix``.
        name: Dataset name the manifest must carry.
        actor: Key id of who triggered the run (the pipeline key if unattended).
        allow_older: Accept a dataset older than the last accepted one.
    """
    ws = Workspace(Path(workspace))
    core.check_dataset_name(name)
    params = ws.params().ingest
    io = {"retries": params.io_retries, "retry_delay_seconds": params.io_retry_delay_s}
    with core.staging_area(ws) as staging:
        staged = stage_dataset.with_options(**io)(workspace, source, str(staging))
        verified = verify_dataset(workspace, staged, name)
        result = store_dataset(workspace, verified, actor, allow_older)
    push_dataset.with_options(**io)(workspace, name)
    return result
