"""The train stage in a workspace: validated data in, a checkpoint in ``models/<name>/``.

Training writes to a scratch directory and swaps it in under the workspace
lock, so a crash or a refusal never leaves half a model where the last one
was. The audit entry ties the model digest to the dataset digest.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from aegis.data.validate import require_stage
from aegis.train.data import load_training_frame
from aegis.train.progress import EpochCallback
from aegis.workspace import Workspace


@dataclass(frozen=True)
class TrainedModel:
    """What the train stage produced."""

    name: str  # dataset name
    model_name: str  # registry name (train.model_name, default <dataset>-model)
    digest: str  # sha256 over weights + config
    directory: str  # workspace-relative
    dataset: str
    defense: str
    privacy: str
    rows: int
    excluded_rows: int


def model_dir(ws: Workspace, name: str) -> Path:
    return ws.root / "models" / name


def registry_name(ws: Workspace, name: str) -> str:
    return ws.params().train.model_name or f"{name}-model"


def train_stage(
    ws: Workspace, name: str, *, actor: str, progress: EpochCallback | None = None
) -> TrainedModel:
    """Trains on the validated ``data/<name>`` minus its quarantine; writes ``models/<name>``.

    Raises:
        RefusedError: The stored data does not verify or has not passed validation.
        ConfigError: ``name`` is not in ``pipeline.datasets`` or params are invalid.
    """
    from aegis.train.trainer import train_and_save

    require_stage(ws, name)
    params = ws.params().train
    data = load_training_frame(ws, name)
    target = model_dir(ws, name)
    scratch = target.with_name(f".{name}.training")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    try:
        digest = train_and_save(data, params, out_dir=scratch, progress=progress)
        with ws.lock():
            shutil.rmtree(target, ignore_errors=True)
            scratch.rename(target)
            trained = TrainedModel(
                name=name,
                model_name=registry_name(ws, name),
                digest=digest,
                directory=str(target.relative_to(ws.root)),
                dataset=data.dataset_digest,
                defense=params.defense,
                privacy=params.privacy,
                rows=len(data.frame),
                excluded_rows=data.excluded_rows,
            )
            ws.audit().append(
                actor=actor,
                action="train.done",
                pipeline_key=ws.pipeline_key(),
                subjects={"model": digest, "dataset": data.dataset_digest},
                details={
                    "name": name,
                    "model_name": trained.model_name,
                    "defense": params.defense,
                    "privacy": params.privacy,
                    "epsilon": params.epsilon,
                    "seed": params.seed,
                    "rows": trained.rows,
                    "excluded_rows": trained.excluded_rows,
                },
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return trained


def record_training(ws: Workspace, trained: TrainedModel) -> str:
    """``dvc commit``s the train stage and commits ``dvc.lock``."""
    from aegis.registry.stages import commit_stage

    return commit_stage(
        ws,
        f"train@{trained.name}",
        evidence=[],
        message=f"train {trained.model_name} {trained.digest} on {trained.dataset}",
    )
