"""The train stage in a workspace: validated data in, a checkpoint in ``models/<name>/``.

The rows trained on are the stored, re-verified version of ``data/<name>``
whose validation result is the audited one, minus its quarantine, plus the
rows an operator released for that exact version (signed and audited; see
:mod:`aegis.data.quarantine`). Training writes to a per-run scratch
directory and swaps it in under the workspace lock, so a crash, a refusal
or a second run at the same time never leaves half a model where the last
one was. The audit entry ties the model digest to the dataset digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aegis.data.quarantine import ROW, read_quarantine, released_rows
from aegis.errors import RefusedError
from aegis.fileutil import ensure_dir, json_object, read_regular
from aegis.ledger import Action, Ledger
from aegis.pipeline.layout import Layout
from aegis.pipeline.stages import commit_stage, require_stage
from aegis.pipeline.validate import load_stored
from aegis.train.data import TrainingData
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


def registry_name(ws: Workspace, name: str) -> str:
    """The model's registry name: ``train.model_name`` or ``<dataset>-model``."""
    return ws.params().train.model_name or f"{name}-model"


@contextlib.contextmanager
def scratch_dir(ws: Workspace, what: str) -> Iterator[Path]:
    """A fresh directory of this run under ``.aegis/scratch/``, removed afterwards.

    Two runs at once each get their own, so neither deletes the other's work.
    """
    path = ensure_dir(ws.root, ws.scratch_dir / f"{what}-{uuid.uuid4().hex}")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def require_validated(ledger: Ledger, name: str, digest: str) -> dict[str, Any]:
    """The validation result of this version, checked against the audit log.

    Raises:
        RefusedError: ``validation``: not validated, failed, or not the audited result.
    """
    layout = Layout.of(ledger.ws)
    path = layout.validation_result(name)
    refusal = RefusedError(
        "validation",
        f"data/{name} ({digest[:19]}) has not passed validation; run `aegis validate {name}`",
    )
    try:
        raw = read_regular(path, what=layout.rel(path))
    except (OSError, RefusedError):
        raise refusal from None
    result = json_object(raw, check="validation", what=layout.rel(path))
    if result.get("dataset") != digest or result.get("success") is not True:
        raise refusal
    # result.json is a plain file: trust it only if it is the one the validate step audited
    if ledger.validated(name, digest, "sha256:" + hashlib.sha256(raw).hexdigest()) is None:
        raise RefusedError(
            "validation",
            f"validation/{name}/result.json is not the audited result of {digest[:19]}",
        )
    return result


def audited_quarantine(result: dict[str, Any], name: str) -> set[int]:
    """The quarantined row positions an audited validation result lists.

    Raises:
        RefusedError: ``validation``: a result from before the rows were part of it
            (validate again), or a malformed list.
    """
    rows = result.get("quarantined_rows")
    if not isinstance(rows, list) or not all(
        isinstance(r, int) and not isinstance(r, bool) for r in rows
    ):
        raise RefusedError(
            "validation",
            f"validation/{name}/result.json does not list its quarantined rows (validated by "
            f"an older Aegis); run `aegis validate {name}` again",
        )
    if len(rows) != result.get("rows", {}).get("quarantined"):
        raise RefusedError("validation", f"validation/{name}/result.json contradicts itself")
    return set(rows)


def load_training_frame(
    ledger: Ledger, name: str, *, version: str | None = None, trusted_set: str | None = None
) -> TrainingData:
    """The stored, re-verified dataset ``name`` without its quarantined rows.

    Rows released from quarantine for this exact version (signed and audited) stay in.
    ``version``: see :func:`~aegis.pipeline.validate.load_stored` (evaluation only).
    ``trusted_set``: ``NAME@digest`` whose rows (by feature hash) are left out too.

    Raises:
        RefusedError: ``validation``: this version has not passed validation,
            or the validation result or quarantine differ from what was audited.
        UsageError: The dataset was never ingested.
    """
    from aegis.data.validate import read_frame

    verified = load_stored(ledger, name, version=version)
    frame, digest = read_frame(verified), verified.digest
    result = require_validated(ledger, name, digest)
    quarantined = audited_quarantine(result, name)
    if not quarantined <= set(range(len(frame))):
        raise RefusedError("validation", f"the audited quarantine of {name} names other rows")
    on_disk = {int(r) for r in read_quarantine(Layout.of(ledger.ws), name)[ROW]}
    if on_disk != quarantined:
        raise RefusedError(
            "validation",
            f"quarantine/{name}.parquet does not hold the rows the audited validation "
            "quarantined (replaced?)",
        )
    released = released_rows(ledger, name, digest) & quarantined
    keep = np.ones(len(frame), dtype=bool)
    keep[sorted(quarantined - released)] = False
    frame, trusted_excluded = frame.iloc[keep].reset_index(drop=True), 0
    if trusted_set is not None:
        from aegis.pipeline.trusted import load_trusted, without_trusted_rows

        frame, trusted_excluded = without_trusted_rows(frame, load_trusted(ledger, trusted_set))
    return TrainingData(
        name=name,
        frame=frame,
        dataset_digest=digest,
        excluded_rows=len(quarantined - released),
        released_rows=len(released),
        trusted_set=trusted_set,
        trusted_excluded=trusted_excluded,
    )


def train_stage(
    ledger: Ledger, name: str, *, actor: str, progress: EpochCallback | None = None
) -> TrainedModel:
    """Trains on the validated ``data/<name>`` minus its quarantine; writes ``models/<name>``.

    Raises:
        RefusedError: The stored data does not verify or has not passed validation.
        ConfigError: ``name`` is not in ``pipeline.datasets`` or params are invalid.
    """
    from aegis.train.trainer import train_and_save

    ws = ledger.ws
    require_stage(ws, name)
    params = ws.params().train
    data = load_training_frame(ledger, name, trusted_set=ws.params().evaluate.trusted_set)
    target = Layout.of(ws).model(name)
    with scratch_dir(ws, f"train-{name}") as scratch:
        out = scratch / "model"
        digest = train_and_save(data, params, out_dir=out, progress=progress)
        with ledger.locked():
            Layout.of(ws).ensure_dir(target)  # refuses a planted symlink in its place
            shutil.rmtree(target)
            out.rename(target)
            trained = TrainedModel(
                name=name,
                model_name=registry_name(ws, name),
                digest=digest,
                directory=Layout.of(ws).rel(target),
                dataset=data.dataset_digest,
                defense=params.defense,
                privacy=params.privacy,
                rows=len(data.frame),
                excluded_rows=data.excluded_rows,
            )
            ledger.append(
                Action.TRAIN_DONE,
                actor=actor,
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
    return trained


def record_training(ledger: Ledger, trained: TrainedModel) -> str:
    """``dvc commit``s the train stage and commits ``dvc.lock``."""
    return commit_stage(
        ledger,
        f"train@{trained.name}",
        evidence=[],
        message=f"train {trained.model_name} {trained.digest} on {trained.dataset}",
    )
