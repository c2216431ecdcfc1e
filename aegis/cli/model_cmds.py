"""Commands on models: the train and evaluate stages, and re-evaluating a stored model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from aegis.cli._app import (
    STATE,
    JsonOpt,
    KeyOpt,
    _actor,
    _console,
    _print_json,
    _ws,
    app,
    stage_app,
)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def model_summary(ws, trained, evaluated, as_json: bool) -> None:
    """Prints the headline figures of a trained and evaluated model."""
    m = evaluated.metrics
    if STATE.json or as_json:
        from dataclasses import asdict

        _print_json({"model": asdict(trained) if trained else None, "metrics": m})
        return
    from rich.table import Table

    robust = m.get("robust") or {}
    mia = m.get("mia") or {}
    table = Table(title=f"model '{evaluated.name}' ({evaluated.model_digest[:19]})")
    for col in ("clean", "robust (worst case)", "PGD", "ε spent", "MIA AUC", "flags"):
        table.add_column(col, overflow="fold")
    eps = m.get("epsilon_spent")
    flags = m.get("flags") or []
    table.add_row(
        _pct(m.get("clean_acc")),
        _pct(robust.get("worst_case")),
        _pct(robust.get("pgd")),
        "-" if eps is None else f"{eps:.2f}",
        _pct(mia.get("auc")),
        "[red]" + "; ".join(str(f) for f in flags) + "[/]" if flags else "[green]none[/]",
    )
    out = _console()
    out.print(table)
    if trained is not None:
        out.print(
            f"defense {trained.defense} (train ε {m.get('train_epsilon')}), privacy "
            f"{trained.privacy}; trained on {trained.rows} rows ({trained.excluded_rows} "
            "quarantined rows left out)"
        )
    out.print(f"report: {ws.root / evaluated.report_path}")


@stage_app.command("train")
def stage_train(name: Annotated[str, typer.Option(help="Dataset name.")]) -> None:
    """The train stage for `dvc repro`: writes models/NAME, DVC records it."""
    from aegis.train.stage import train_stage

    ws = _ws()
    actor, _ = ws.actor(None)
    trained = train_stage(ws, name, actor=actor)
    _console().print(f"trained {trained.model_name}: {trained.digest} -> {trained.directory}")


@stage_app.command("evaluate")
def stage_evaluate(name: Annotated[str, typer.Option(help="Dataset name.")]) -> None:
    """The evaluate stage for `dvc repro`: writes reports/NAME, DVC records it."""
    from aegis.evaluate.stage import evaluate_stored

    ws = _ws()
    actor, _ = ws.actor(None)
    evaluated = evaluate_stored(ws, name, actor=actor)
    _console().print(f"evaluated {name}: {evaluated.metrics_path}, {evaluated.report_path}")


@app.command()
def evaluate(
    model_dir: Annotated[Path, typer.Argument(help="A checkpoint directory (models/NAME).")],
    data: Annotated[str, typer.Option("--data", help="The validated dataset it was trained on.")],
    out: Annotated[
        Path | None, typer.Option(help="Where to write metrics.json and report.html.")
    ] = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a stored model again on its held-out split (refuses unverifiable input)."""
    from aegis.evaluate.stage import evaluate_stored

    ws = _ws()
    actor = _actor(ws, key)
    target = out or ws.root / "reports" / f"{data}-reevaluated"
    with _console(stderr=True).status(f"evaluating {model_dir} (attacks take a while) ..."):
        evaluated = evaluate_stored(
            ws, data, actor=actor, model_directory=model_dir.resolve(), out_dir=target.resolve()
        )
    model_summary(ws, None, evaluated, as_json)
