"""The evaluate stage in a workspace: a stored model against its held-out test split.

The split is recomputed from the seed and fractions saved with the model
and must match the test digest recorded at training time, so the test rows
are provably ones the model never saw. Writes ``metrics.json`` (DVC
metrics) and ``report.html`` (with the calibration and membership-inference
curves, and the training history) and audits the metrics' digest.

The attack jobs run serially in this process unless a ``map_jobs`` is given, or
installed for the duration of a pipeline step with :func:`attack_jobs_mapped_by`
(the retrain flow's evaluate task installs its task runner's; the core never
imports Prefect).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegis.config import TrainParams
from aegis.errors import RefusedError
from aegis.fileutil import atomic_write
from aegis.ledger import Action, Ledger
from aegis.pipeline.checks import post_training_checks
from aegis.pipeline.layout import Layout, check_output
from aegis.pipeline.stages import commit_stage, require_stage
from aegis.pipeline.train import load_training_frame

if TYPE_CHECKING:
    from aegis.evaluate.jobs import MapJobs

# The map_jobs of the step under way: the retrain flow's evaluate step reaches evaluate_stored
# through aegis.pipeline.retrain, whose steps take no runner argument of their own.
_MAP_JOBS: ContextVar[MapJobs | None] = ContextVar("aegis_evaluate_map_jobs", default=None)


@contextmanager
def attack_jobs_mapped_by(map_jobs: MapJobs) -> Iterator[None]:
    """Makes every :func:`evaluate_stored` call within run its attack jobs on ``map_jobs``.

    Args:
        map_jobs: Runs a list of ``aegis.evaluate.jobs.AttackJob`` and returns their
            results in order (e.g. as Prefect tasks on the configured task runner).
    """
    token = _MAP_JOBS.set(map_jobs)
    try:
        yield
    finally:
        _MAP_JOBS.reset(token)


@dataclass(frozen=True)
class EvaluatedModel:
    """What the evaluate stage produced."""

    name: str
    model_digest: str
    metrics: dict[str, Any]
    metrics_path: str  # workspace-relative (or absolute outside the workspace)
    report_path: str


def evaluate_stored(
    ledger: Ledger,
    name: str,
    *,
    actor: str,
    model_directory: Path | None = None,
    out_dir: Path | None = None,
    loaded=None,
    map_jobs: MapJobs | None = None,
) -> EvaluatedModel:
    """Evaluates ``models/<name>`` (or ``model_directory``) on the validated ``data/<name>``.

    ``loaded`` is a model already loaded and verified (a release's, through
    ``load_release_model``); ``model_directory`` must then be its directory.
    ``out_dir`` (another place than the stage's ``reports/<name>``) may not lie
    in a stage output or in ``releases/``. ``map_jobs`` runs the attack jobs
    (default: the one installed by :func:`attack_jobs_mapped_by`, else serially);
    the figures are the same wherever they run.

    Raises:
        RefusedError: ``checkpoint`` (not a valid Aegis checkpoint), ``path``
            (``out_dir`` is a stage output or a release) or ``evaluate`` (trained
            on another dataset version, or the test split differs from the recorded one).
    """
    import numpy as np
    import torch

    from aegis.evaluate.evaluate import evaluate_model
    from aegis.evaluate.report import render_report
    from aegis.train.checkpoint import load_checkpoint
    from aegis.train.data import input_domain, prepare, to_tensors

    ws = ledger.ws
    require_stage(ws, name)
    layout = Layout.of(ws)
    out = layout.reports(name)
    if out_dir is not None:
        check_output(ws, out_dir, datasets=ws.params().pipeline.datasets)
        # written where it lies lexically: a symlink planted on the way in the
        # workspace is refused by ensure_dir below, never followed elsewhere
        out = Path(os.path.abspath(out_dir.expanduser()))
    directory = model_directory or layout.model(name)
    loaded = loaded or load_checkpoint(directory)
    trusted_ref = _trusted_ref(ws, loaded.config)
    # the model's own data may be an older accepted version, checked out to re-evaluate it
    data = load_training_frame(
        ledger, name, version=str(loaded.config.get("dataset")),
        trusted_set=(loaded.config.get("trusted_set") or {}).get("ref"),
    )  # fmt: skip
    if data.dataset_digest != loaded.config.get("dataset"):
        raise RefusedError(
            "evaluate",
            f"the model was trained on {str(loaded.config.get('dataset'))[:19]}, but data/{name} "
            f"is {data.dataset_digest[:19]}",
        )
    train_params = TrainParams.model_validate(loaded.config["train"])
    prepared = prepare(data, train_params)
    if prepared.split.test_digest != loaded.config["split"]["test_digest"]:
        raise RefusedError("evaluate", "the recomputed test split differs from the recorded one")
    spec = loaded.spec
    x_test, y_test = to_tensors(prepared.frame, prepared.split.test, spec)
    x_train, y_train = to_tensors(prepared.frame, prepared.split.train, spec)
    x_val, _ = to_tensors(prepared.frame, prepared.split.val, spec)  # the detector's calibration
    threads = torch.get_num_threads()
    torch.set_num_threads(train_params.threads)
    try:
        result = evaluate_model(
            loaded.model,
            x_test=x_test,
            y_test=y_test,
            x_train=x_train,
            y_train=y_train,
            domain=input_domain(spec, train_params),
            train_eps=train_params.epsilon,
            params=ws.params().evaluate,
            seed=train_params.seed,
            dp=loaded.config.get("privacy"),
            map_jobs=map_jobs or _MAP_JOBS.get(),
        )
    finally:
        torch.set_num_threads(threads)
    metrics = {
        **result.to_metrics(),
        "model": loaded.digest,
        "dataset": data.dataset_digest,
        "defense": train_params.defense,
        "train_epsilon": train_params.epsilon,
    }
    extra = post_training_checks(
        ledger, loaded, x_test, y_test, x_val=x_val, domain=input_domain(spec, train_params),
        train_params=train_params, trusted_ref=trusted_ref, train=(x_train, y_train),
        test_rows=prepared.frame.iloc[prepared.split.test][list(spec.feature_columns)]
        .to_numpy(dtype=np.float64),
    )  # fmt: skip
    metrics.update(extra.metrics)
    if extra.flags:
        metrics["flags"] = [*metrics.get("flags", []), *extra.flags]
        metrics["flag_reasons"] = {**metrics.get("flag_reasons", {}), **extra.flags}
    metrics_bytes = json.dumps(metrics, indent=1, sort_keys=True).encode() + b"\n"
    page = render_report(
        metrics,
        history=loaded.metadata.get("history") if isinstance(loaded.metadata, dict) else None,
        details=result.details(),
        title=f"Evaluation of {name}",
    )
    with ledger.locked():
        if out.is_relative_to(ledger.ws.root):  # a folder of ours: no planted symlink
            Layout.of(ledger.ws).ensure_dir(out)
        else:  # the user's --out, elsewhere
            out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "metrics.json", metrics_bytes)
        atomic_write(out / "report.html", page.encode())
        ledger.append(
            Action.EVALUATE_DONE,
            actor=actor,
            subjects={
                "model": loaded.digest,
                "dataset": data.dataset_digest,
                "metrics": "sha256:" + hashlib.sha256(metrics_bytes).hexdigest(),
            },
            details={"name": name, "flags": metrics.get("flags", [])},
        )
    shown = Path(layout.rel(out)) if out.is_relative_to(ws.root) else out
    return EvaluatedModel(
        name=name,
        model_digest=loaded.digest,
        metrics=metrics,
        metrics_path=str(shown / "metrics.json"),
        report_path=str(shown / "report.html"),
    )


def _trusted_ref(ws, config: dict[str, Any]) -> str | None:
    """The trusted set to measure on: the params', which the model must have been kept from.

    Raises:
        RefusedError: ``trusted-set``: the model was trained without leaving its rows out.
    """
    wanted = ws.params().evaluate.trusted_set
    recorded = (config.get("trusted_set") or {}).get("ref")
    if wanted is not None and recorded != wanted:
        raise RefusedError(
            "trusted-set",
            f"the model was trained without leaving out the rows of {wanted[:40]} (it may "
            "have trained on them); train again with evaluate.trusted_set set",
        )
    return wanted


def record_evaluation(ledger: Ledger, evaluated: EvaluatedModel) -> str:
    """``dvc commit``s the evaluate stage and commits ``dvc.lock`` and ``metrics.json``."""
    return commit_stage(
        ledger,
        f"evaluate@{evaluated.name}",
        evidence=[evaluated.metrics_path],
        message=f"evaluate {evaluated.name} {evaluated.model_digest}",
    )
