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
    _ledger,
    _print_json,
    _print_notes,
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
    from aegis.pipeline.train import train_stage

    ledger = _ledger()
    actor, _ = ledger.actor(None)
    trained = train_stage(ledger, name, actor=actor)
    _console().print(f"trained {trained.model_name}: {trained.digest} -> {trained.directory}")


@stage_app.command("evaluate")
def stage_evaluate(name: Annotated[str, typer.Option(help="Dataset name.")]) -> None:
    """The evaluate stage for `dvc repro`: writes reports/NAME, DVC records it."""
    from aegis.pipeline.evaluate import evaluate_stored

    ledger = _ledger()
    actor, _ = ledger.actor(None)
    evaluated = evaluate_stored(ledger, name, actor=actor)
    _console().print(f"evaluated {name}: {evaluated.metrics_path}, {evaluated.report_path}")


@app.command()
def evaluate(
    model: Annotated[
        str,
        typer.Argument(
            help="A release (NAME@vN, NAME#prod) or a directory path with a '/': a release "
            "directory or a checkpoint (models/NAME)."
        ),
    ],
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="The validated dataset it was trained on [default: a release's dataset].",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Where to write metrics.json and report.html (not a stage output)."),
    ] = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a release or stored model again on its held-out split (verified first)."""
    from aegis.pipeline.evaluate import evaluate_stored
    from aegis.registry.targets import Target, parse_release_arg
    from aegis.registry.verify import is_release_path, load_release_model, open_release_arg

    ledger = _ledger()
    ws = ledger.ws
    actor = _actor(ledger, key)
    what = parse_release_arg(model)
    loaded = verified = None
    if isinstance(what, Target) or is_release_path(ledger, Path.cwd() / what):
        verified, notes = open_release_arg(ledger, model)
        _print_notes(notes, "reconciled")
        loaded = load_release_model(verified)
        directory = verified.directory / "model"
        data = data or verified.release.get("dataset_name")
    else:
        directory = (Path.cwd() / what).resolve()
    if not data:
        raise typer.BadParameter("--data NAME is required for a checkpoint directory")
    target = out or ws.root / "reports" / f"{data}-reevaluated"
    with _console(stderr=True).status(f"evaluating {model} (attacks take a while) ..."):
        evaluated = evaluate_stored(
            ledger, data, actor=actor, model_directory=directory, out_dir=target, loaded=loaded
        )
    model_summary(ws, None, evaluated, as_json)
