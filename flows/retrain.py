"""The ``retrain`` flow: the retrain run's steps (``aegis.pipeline.retrain``) as Prefect tasks.

ingest -> validate (the staged copy, before storing) -> store -> train ->
evaluate -> release. The order lives in the core; the flow composes it with
a task per step.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from aegis.ledger import Ledger
from aegis.pipeline.retrain import RetrainResult, run_retrain
from aegis.workspace import Workspace
from tasks.steps import as_task


@flow(name="retrain", log_prints=True)
def retrain(
    workspace: str, source: str, name: str, actor: str, allow_older: bool = False
) -> RetrainResult:
    """Verifies, validates and versions a dataset, trains and evaluates a model, releases it.

    Args:
        workspace: Workspace root.
        source: Dataset directory or ``s3://bucket/prefix``.
        name: Dataset name the manifest must carry.
        actor: Key id of who triggered the run (the pipeline key if unattended).
        allow_older: Accept a dataset older than the last accepted one.
    """
    ledger = Ledger.load(Workspace(Path(workspace)))
    return run_retrain(
        ledger, source=source, name=name, actor=actor, allow_older=allow_older, runner=as_task
    )
