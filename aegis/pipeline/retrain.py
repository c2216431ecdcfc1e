"""The retrain run: its steps, in order, as core code the Prefect flow only composes.

stage (I/O) -> verify -> validate the *verified staged copy* -> store ->
record the validation -> push -> train -> evaluate -> push -> release -> push.

One run at a time per workspace (the run lock, triggered or manual). A
delivery whose manifest digest was already accepted and released ends
"already current" with nothing changed; one accepted but never released (a
run that died after storing it) is completed from validation on. Every run
records its trigger (event, schedule or person) in its audit entries and
its release.

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
from aegis.data.reputation import check_supplier
from aegis.data.validate import ValidationResult
from aegis.errors import RefusedError
from aegis.ledger import Ledger
from aegis.pipeline import evaluate as evaluate_stage
from aegis.pipeline import train as train_stage
from aegis.pipeline import validate as validate_stage
from aegis.pipeline.evaluate import EvaluatedModel
from aegis.pipeline.stages import push_stage, require_stage
from aegis.pipeline.train import TrainedModel
from aegis.registry.release import Release, build_release, push_release
from aegis.retry import retry_io
from aegis.triggers.record import Trigger, check_unattended


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


def _release(ledger: Ledger, name: str, actor: str, trigger: dict | None) -> Release:
    return build_release(ledger, name, actor=actor, trigger=trigger)


def _push_release(ledger: Ledger, release: Release) -> None:
    push_release(ledger.ws, release)


STAGE = Step("stage-dataset", _stage, io=True)
VERIFY = Step("verify-dataset", lambda ledger, staged, name: ingest_core.verify_staged(
    ledger, staged, name=name))  # fmt: skip
VALIDATE = Step("validate-dataset", validate_stage.check_version)


def _store(ledger: Ledger, verified, actor: str, allow_older: bool, trigger: dict | None):
    return ingest_core.store(
        ledger, verified, actor=actor, allow_older=allow_older, trigger=trigger
    )


STORE = Step("store-dataset", _store)
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
    """What one run produced, step by step (``ingest`` is None when it completed a stored one;
    ``validate`` too when it retrained accepted data for an incident)."""

    ingest: IngestResult | None
    validate: ValidationResult | None
    train: TrainedModel
    evaluate: EvaluatedModel
    release: Release
    trigger: Trigger
    status: str = "released"  # released | completed (a stored version's run finished)


@dataclass(frozen=True)
class AlreadyCurrent:
    """A run that changed nothing: the delivery's digest was already accepted and released."""

    name: str
    digest: str
    release: str | None  # the tag released from it, if this version is still current
    trigger: Trigger
    status: str = "already-current"

    def message(self) -> str:
        """The line a person reads (and the flow run's final message)."""
        where = f" (released as {self.release})" if self.release else " (a newer one is current)"
        return f"already current: '{self.name}' {self.digest[:19]} was accepted before{where}"


def _released_from(ledger: Ledger, digest: str) -> str | None:
    """The tag of a release built from dataset ``digest``, if any (not aborted)."""
    for record in sorted(ledger.releases().values(), key=lambda r: r.seq, reverse=True):
        if record.dataset_digest == digest and not record.aborted:
            return f"{record.model}@{record.version}"
    return None


def _check_digest(verified, expect_digest: str | None) -> None:
    if expect_digest is not None and verified.digest != expect_digest:
        raise RefusedError(
            "trigger",
            f"the delivery's manifest digest is {verified.digest[:19]}, the event named "
            f"{expect_digest[:19]} (changed since it was reported, or a forged event)",
        )


def run_retrain(
    ledger: Ledger,
    *,
    source: str,
    name: str,
    actor: str,
    allow_older: bool = False,
    trigger: Trigger | None = None,
    expect_digest: str | None = None,
    runner: Runner = run_direct,
    on_wait: Callable[[], None] | None = None,
) -> RetrainResult | AlreadyCurrent:
    """Verifies, validates and versions a dataset, trains and evaluates a model, releases it.

    Args:
        ledger: The workspace's verified ledger (one per run).
        source: Dataset directory or ``s3://bucket/prefix``.
        name: Dataset name the manifest must carry.
        actor: Key id of who triggered the run (the pipeline key if unattended).
        allow_older: Accept a dataset older than the last accepted one (manual runs only).
        trigger: What started the run (default: a person, ``actor``).
        expect_digest: The manifest digest the triggering event named; another is refused.
        runner: How each step runs (:func:`run_direct`, or as a Prefect task).
        on_wait: Called once if another run of this workspace holds the run lock.

    Returns:
        The run's results, or :class:`AlreadyCurrent` when there was nothing to do.

    Raises:
        RefusedError: The first refusing check; nothing after it ran.
    """
    ws = ledger.ws
    trigger = trigger or Trigger(kind="manual", person=actor)
    check_unattended(trigger, allow_older=allow_older)
    ingest_core.check_dataset_name(name)
    require_stage(ws, name)  # before any change: the stages must be able to track it
    recorded = trigger.to_dict()
    with ws.run_lock(on_wait=on_wait):
        ledger.refresh()  # another run may have appended while this one waited
        ingested = None
        with ingest_core.staging_area(ws) as staging:
            staged = runner(STAGE, ledger, source, str(staging))
            verified = runner(VERIFY, ledger, staged, name)
            _check_digest(verified, expect_digest)
            if ledger.accepted(verified.digest) is not None:
                released = _released_from(ledger, verified.digest)
                last = ledger.last_accepted(name)
                if released is not None or last is None or last.digest != verified.digest:
                    return AlreadyCurrent(name, verified.digest, released, trigger)
            check_supplier(ledger, verified.supplier_name)  # before the screens' work
            checked = runner(VALIDATE, ledger, verified)
            if ledger.accepted(verified.digest) is None:
                ingested = runner(STORE, ledger, verified, actor, allow_older, recorded)
        validated = runner(RECORD_VALIDATION, ledger, checked, actor)
        runner(PUSH_DATA, ledger, name)
        trained = runner(TRAIN, ledger, name, actor)
        evaluated = runner(EVALUATE, ledger, name, actor)
        runner(PUSH_MODELS, ledger, name)
        released = runner(RELEASE, ledger, name, actor, recorded)
        runner(PUSH_RELEASE, ledger, released)
    return RetrainResult(
        ingest=ingested, validate=validated, train=trained, evaluate=evaluated, release=released,
        trigger=trigger, status="released" if ingested is not None else "completed",
    )  # fmt: skip


def run_incident_retrain(
    ledger: Ledger, *, incident: str, flow_run: str | None = None, runner: Runner = run_direct
) -> RetrainResult | AlreadyCurrent:
    """The monitor's ``retrain`` action: a forced retrain on the latest accepted data.

    The incident is looked up on the signed audit log (whoever starts the run, through
    the event trigger or the API, names only its id): it must exist and its action be
    ``retrain``; one release per incident (a second run finds it and changes nothing).
    The dataset is the one the incident's version was released from; the run trains on
    its latest accepted version, evaluates and releases, acting as the pipeline key.

    Raises:
        RefusedError: ``incident``: no such incident, or its action is not ``retrain``;
            ``registry``: its version's release is not on the audit log.
    """
    from aegis.monitor.incidents import incidents

    found = next((i for i in incidents(ledger) if i.id == incident), None)
    if found is None or found.action != "retrain":
        why = "is not on the audit log" if found is None else f"is a {found.action} incident"
        raise RefusedError("incident", f"{incident} {why}: only a retrain incident starts one")
    record = ledger.release(found.model, found.version)
    accepted = ledger.accepted(str(record.dataset_digest)) if record else None
    if accepted is None:
        raise RefusedError("registry", f"{found.model}@{found.version}: no recorded dataset")
    trigger = Trigger(kind="incident", incident=incident, flow_run=flow_run)
    actor = ledger.pipeline_entry().key_id
    with ledger.ws.run_lock():
        ledger.refresh()
        done = next((r for r in ledger.releases().values() if not r.aborted and
                     (r.trigger or {}).get("incident") == incident), None)  # fmt: skip
        latest = ledger.last_accepted(accepted.name)
        if done is not None or latest is None:
            tag = f"{done.model}@{done.version}" if done else None
            return AlreadyCurrent(accepted.name, accepted.digest, tag, trigger)
        require_stage(ledger.ws, accepted.name)
        trained = runner(TRAIN, ledger, accepted.name, actor)
        evaluated = runner(EVALUATE, ledger, accepted.name, actor)
        runner(PUSH_MODELS, ledger, accepted.name)
        released = runner(RELEASE, ledger, accepted.name, actor, trigger.to_dict())
        runner(PUSH_RELEASE, ledger, released)
    return RetrainResult(ingest=None, validate=None, train=trained, evaluate=evaluated,
                         release=released, trigger=trigger, status="completed")  # fmt: skip
