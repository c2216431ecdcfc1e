"""Tasks of the training and evaluation steps: run, record in DVC and git, push (I/O)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from aegis.evaluate import stage as evaluate_core
from aegis.registry.stages import push_stage
from aegis.train import stage as train_core
from aegis.workspace import Workspace
from tasks.ingest import retry_on_io_only


@task(cache_policy=NO_CACHE)
def train_model(workspace: str, name: str, actor: str) -> train_core.TrainedModel:
    """Trains on the validated dataset minus its quarantine; writes models/<name>."""
    return train_core.train_stage(Workspace(Path(workspace)), name, actor=actor)


@task(cache_policy=NO_CACHE)
def record_training(workspace: str, trained: train_core.TrainedModel) -> str:
    """``dvc commit``s the train stage."""
    return train_core.record_training(Workspace(Path(workspace)), trained)


@task(cache_policy=NO_CACHE)
def evaluate_model(workspace: str, name: str, actor: str) -> evaluate_core.EvaluatedModel:
    """Evaluates models/<name> on its held-out split: attacks, calibration, privacy."""
    return evaluate_core.evaluate_stored(Workspace(Path(workspace)), name, actor=actor)


@task(cache_policy=NO_CACHE)
def record_evaluation(workspace: str, evaluated: evaluate_core.EvaluatedModel) -> str:
    """``dvc commit``s the evaluate stage and commits metrics.json."""
    return evaluate_core.record_evaluation(Workspace(Path(workspace)), evaluated)


@task(retries=3, retry_delay_seconds=2, retry_condition_fn=retry_on_io_only, cache_policy=NO_CACHE)
def push_stages(workspace: str, stages: list[str]) -> None:
    """Pushes the stages' cached outputs to the DVC remote."""
    ws = Workspace(Path(workspace))
    for stage in stages:
        push_stage(ws, stage)
