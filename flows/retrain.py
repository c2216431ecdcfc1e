"""The ``retrain`` flow: ingest -> validate -> train -> evaluate -> release.

Validation runs on the verified staged copy *before* it is stored, so a
dataset that fails a table-level check or the drift gate never becomes the
current version: the workspace is left exactly as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import flow

from aegis.data import ingest as ingest_core
from aegis.data.validate import ValidationResult, require_stage
from aegis.evaluate.stage import EvaluatedModel
from aegis.registry.release import Release
from aegis.train.stage import TrainedModel
from aegis.workspace import Workspace
from tasks.ingest import push_dataset, stage_dataset, store_dataset, verify_dataset
from tasks.release import build_release, push_release
from tasks.train import (
    evaluate_model,
    push_stages,
    record_evaluation,
    record_training,
    train_model,
)
from tasks.validate import check_dataset, push_validation, record_validation, write_validation


@dataclass(frozen=True)
class RetrainResult:
    """What one run produced, step by step."""

    ingest: ingest_core.IngestResult
    validate: ValidationResult
    train: TrainedModel
    evaluate: EvaluatedModel
    release: Release


@flow(name="retrain", log_prints=True)
def retrain(
    workspace: str, source: str, name: str, actor: str, allow_older: bool = False
) -> RetrainResult:
    """Verifies, validates and versions a dataset, trains and evaluates a model, releases it.

    The release (``releases/<model>/v<N>``, signed, tagged ``<model>@vN.0.0``)
    is built only after train and evaluate are recorded and pushed.

    Args:
        workspace: Workspace root.
        source: Dataset directory or ``s3://bucket/prefix``.
        name: Dataset name the manifest must carry.
        actor: Key id of who triggered the run (the pipeline key if unattended).
        allow_older: Accept a dataset older than the last accepted one.
    """
    ws = Workspace(Path(workspace))
    ingest_core.check_dataset_name(name)
    require_stage(ws, name)  # before any change: the stages must be able to track it
    params = ws.params().ingest
    io = {"retries": params.io_retries, "retry_delay_seconds": params.io_retry_delay_s}
    with ingest_core.staging_area(ws) as staging:
        staged = stage_dataset.with_options(**io)(workspace, source, str(staging))
        verified = verify_dataset(workspace, staged, name)
        checked = check_dataset(workspace, verified)
        ingested = store_dataset(workspace, verified, actor, allow_older)
    # Record the validation before any push, so a failed push never leaves the new
    # version stored beside the previous version's validation evidence.
    validated = write_validation(workspace, checked, actor)
    record_validation(workspace, validated)
    push_dataset.with_options(**io)(workspace, name)
    push_validation.with_options(**io)(workspace, name)

    trained = train_model(workspace, name, actor)
    record_training(workspace, trained)
    evaluated = evaluate_model(workspace, name, actor)
    record_evaluation(workspace, evaluated)
    push_stages.with_options(**io)(workspace, [f"train@{name}", f"evaluate@{name}"])
    released = build_release(workspace, name, actor)
    push_release.with_options(**io)(workspace, released)
    return RetrainResult(
        ingest=ingested, validate=validated, train=trained, evaluate=evaluated, release=released
    )
