"""The evaluate stage in a workspace: a stored model against its held-out test split.

The split is recomputed from the seed and fractions saved with the model
and must match the test digest recorded at training time, so the test rows
are provably ones the model never saw. Writes ``metrics.json`` (DVC
metrics) and ``report.html`` and audits the metrics' digest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aegis.config import TrainParams
from aegis.data.validate import require_stage
from aegis.errors import RefusedError
from aegis.fileutil import atomic_write
from aegis.workspace import Workspace


@dataclass(frozen=True)
class EvaluatedModel:
    """What the evaluate stage produced."""

    name: str
    model_digest: str
    metrics: dict[str, Any]
    metrics_path: str  # workspace-relative
    report_path: str


def report_dir(ws: Workspace, name: str) -> Path:
    return ws.root / "reports" / name


def evaluate_stored(
    ws: Workspace,
    name: str,
    *,
    actor: str,
    model_directory: Path | None = None,
    out_dir: Path | None = None,
    loaded=None,
) -> EvaluatedModel:
    """Evaluates ``models/<name>`` (or ``model_directory``) on the validated ``data/<name>``.

    ``loaded`` is a model already loaded and verified (a release's, through
    ``load_release_model``); ``model_directory`` must then be its directory.

    Raises:
        RefusedError: ``checkpoint`` (not a valid Aegis checkpoint) or
            ``evaluate`` (trained on another dataset version, or the test split
            differs from the recorded one).
    """
    import torch

    from aegis.evaluate.evaluate import evaluate_model
    from aegis.evaluate.report import render_report
    from aegis.train.checkpoint import load_checkpoint
    from aegis.train.data import input_domain, load_training_frame, prepare, to_tensors
    from aegis.train.stage import model_dir

    require_stage(ws, name)
    directory = model_directory or model_dir(ws, name)
    loaded = loaded or load_checkpoint(directory)
    data = load_training_frame(ws, name)
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
    eval_params = ws.params().evaluate
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
            params=eval_params,
            seed=train_params.seed,
            dp=loaded.config.get("privacy"),
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
    out = out_dir or report_dir(ws, name)
    out.mkdir(parents=True, exist_ok=True)
    history = _history(directory)
    metrics_bytes = json.dumps(metrics, indent=1, sort_keys=True).encode() + b"\n"
    with ws.lock():
        atomic_write(out / "metrics.json", metrics_bytes)
        atomic_write(
            out / "report.html",
            render_report(metrics, history=history, title=f"Evaluation of {name}").encode(),
        )
        ws.audit().append(
            actor=actor,
            action="evaluate.done",
            pipeline_key=ws.pipeline_key(),
            subjects={
                "model": loaded.digest,
                "dataset": data.dataset_digest,
                "metrics": "sha256:" + hashlib.sha256(metrics_bytes).hexdigest(),
            },
            details={"name": name, "flags": metrics.get("flags", [])},
        )
    rel = out.relative_to(ws.root) if out.is_relative_to(ws.root) else out
    return EvaluatedModel(
        name=name,
        model_digest=loaded.digest,
        metrics=metrics,
        metrics_path=str(Path(rel) / "metrics.json"),
        report_path=str(Path(rel) / "report.html"),
    )


def _history(directory: Path) -> list[dict] | None:
    try:
        return json.loads((directory / "metadata.json").read_text()).get("history")
    except (OSError, ValueError):
        return None


def record_evaluation(ws: Workspace, evaluated: EvaluatedModel) -> str:
    """``dvc commit``s the evaluate stage and commits ``dvc.lock`` and ``metrics.json``."""
    from aegis.registry.stages import commit_stage

    return commit_stage(
        ws,
        f"evaluate@{evaluated.name}",
        evidence=[evaluated.metrics_path],
        message=f"evaluate {evaluated.name} {evaluated.model_digest}",
    )
