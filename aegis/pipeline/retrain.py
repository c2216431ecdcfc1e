"""The retrain run: its steps, in order, as core code the Prefect flow only composes.

stage (I/O) -> verify -> validate the *verified staged copy* -> store ->
record the validation -> push -> train -> evaluate -> push -> release -> push.

Validation runs before the dataset is stored, so a delivery that fails a
table-level check or the drift gate never becomes the current version: the
workspace is left exactly as it was. The validation is recorded before any
push, so a failed push never leaves the new version stored beside the
previous version's validation evidence.

:func:`run_retrain` takes a ``runner`` that executes each :class:`Step`:
called directly (tests, scripts) or as a Prefect task (``flows/retrain.py``,
which retries the I/O steps on transient I/O errors only). Either way the
order and the arguments are decided here, once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aegis.data import ingest as ingest_core
from aegis.data.ingest import IngestResult
from aegis.data.validate import ValidationResult
from aegis.ledger import Ledger
from aegis.pipeline import evaluate as evaluate_stage
from aegis.pipeline import train as train_stage
from aegis.pipeline import validate as validate_stage
from aegis.pipeline.evaluate import EvaluatedModel
from aegis.pipeline.stages import push_stage, require_stage
from aegis.pipeline.train import TrainedModel
from aegis.registry.release import Release, build_release, push_release
from aegis.retry import retry_io


@dataclass(frozen=True)
class Step:
    """One step of the run: a core function, and whether it is I/O (retried)."""

    name: str
    fn: Callable[..., Any]
    io: bool = False


def _stage(ledger: Ledger, source: str, staging: str):
    return ingest_core.stage(ledger.ws, source, Path(staging))


def _record_validation(ledger: Ledger, checked, actor: str) -> ValidationResult:
    result = validate_stage.write_validation(ledger, checked, actor=actor)
    validate_stage.record_validation(ledger, result)
    return result


def _push_data(ledger: Ledger, name: str) -> None:
    ingest_core.push(ledger.ws, name)
    push_stage(ledger.ws, f"validate@{name}")


def _train(ledger: Ledger, name: str, actor: str) -> TrainedModel:
    trained = train_stage.train_stage(ledger, name, actor=actor)
    train_stage.record_training(ledger, trained)
    return trained


def _evaluate(ledger: Ledger, name: str, actor: str) -> EvaluatedModel:
    evaluated = evaluate_stage.evaluate_stored(ledger, name, actor=actor)
    evaluate_stage.record_evaluation(ledger, evaluated)
    return evaluated


def _push_models(ledger: Ledger, name: str) -> None:
    for stage in (f"train@{name}", f"evaluate@{name}"):
        push_stage(ledger.ws, stage)


def _release(ledger: Ledger, name: str, actor: str) -> Release:
    return build_release(ledger, name, actor=actor)


def _push_release(ledger: Ledger, release: Release) -> None:
    push_release(ledger.ws, release)


STAGE = Step("stage-dataset", _stage, io=True)
VERIFY = Step("verify-dataset", lambda ledger, staged, name: ingest_core.verify_staged(
    ledger, staged, name=name))  # fmt: skip
VALIDATE = Step("validate-dataset", validate_stage.check_version)
STORE = Step("store-dataset", lambda ledger, verified, actor, allow_older: ingest_core.store(
    ledger, verified, actor=actor, allow_older=allow_older))  # fmt: skip
RECORD_VALIDATION = Step("record-validation", _record_validation)
PUSH_DATA = Step("push-dataset", _push_data, io=True)
TRAIN = Step("train-model", _train)
EVALUATE = Step("evaluate-model", _evaluate)
PUSH_MODELS = Step("push-stages", _push_models, io=True)
RELEASE = Step("build-release", _release)
PUSH_RELEASE = Step("push-release", _push_release, io=True)
STEPS = (
    STAGE, VERIFY, VALIDATE, STORE, RECORD_VALIDATION, PUSH_DATA,
    TRAIN, EVALUATE, PUSH_MODELS, RELEASE, PUSH_RELEASE,
)  # fmt: skip

Runner = Callable[..., Any]


def run_direct(step: Step, ledger: Ledger, *args: Any) -> Any:
    """Runs a step in this process; an I/O step is retried on transient I/O errors only."""
    if not step.io:
        return step.fn(ledger, *args)
    params = ledger.ws.params().ingest
    return retry_io(
        lambda: step.fn(ledger, *args),
        retries=params.io_retries,
        delay_s=params.io_retry_delay_s,
    )


@dataclass(frozen=True)
class RetrainResult:
    """What one run produced, step by step."""

    ingest: IngestResult
    validate: ValidationResult
    train: TrainedModel
    evaluate: EvaluatedModel
    release: Release


def run_retrain(
    ledger: Ledger,
    *,
    source: str,
    name: str,
    actor: str,
    allow_older: bool = False,
    runner: Runner = run_direct,
) -> RetrainResult:
    """Verifies, validates and versions a dataset, trains and evaluates a model, releases it.

    Args:
        ledger: The workspace's verified ledger (one per run).
        source: Dataset directory or ``s3://bucket/prefix``.
        name: Dataset name the manifest must carry.
        actor: Key id of who triggered the run (the pipeline key if unattended).
        allow_older: Accept a dataset older than the last accepted one.
        runner: How each step runs (:func:`run_direct`, or as a Prefect task).

    Raises:
        RefusedError: The first refusing check; nothing after it ran.
    """
    ws = ledger.ws
    ingest_core.check_dataset_name(name)
    require_stage(ws, name)  # before any change: the stages must be able to track it
    with ingest_core.staging_area(ws) as staging:
        staged = runner(STAGE, ledger, source, str(staging))
        verified = runner(VERIFY, ledger, staged, name)
        checked = runner(VALIDATE, ledger, verified)
        ingested = runner(STORE, ledger, verified, actor, allow_older)
    validated = runner(RECORD_VALIDATION, ledger, checked, actor)
    runner(PUSH_DATA, ledger, name)
    trained = runner(TRAIN, ledger, name, actor)
    evaluated = runner(EVALUATE, ledger, name, actor)
    runner(PUSH_MODELS, ledger, name)
    released = runner(RELEASE, ledger, name, actor)
    runner(PUSH_RELEASE, ledger, released)
    return RetrainResult(
        ingest=ingested, validate=validated, train=trained, evaluate=evaluated, release=released
    )
