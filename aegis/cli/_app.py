"""The Typer application, global options and helpers shared by the command modules.

Imports here and in the command modules are lazy: ``aegis --help`` must answer
at once, while Prefect, DVC, pandas, GX and model_signing cost seconds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="Aegis: a secure ML training pipeline. Verified data in, signed models out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
keys_app = typer.Typer(help="Key pairs registered in the trust store.", no_args_is_help=True)
trust_app = typer.Typer(help="The signed trust store.", no_args_is_help=True)
data_app = typer.Typer(help="Demo data and signed datasets.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
quarantine_app = typer.Typer(help="Rows that failed row-level checks.", no_args_is_help=True)
stage_app = typer.Typer(help="One dvc.yaml stage (what `dvc repro` runs).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(trust_app, name="trust")
app.add_typer(data_app, name="data")
app.add_typer(audit_app, name="audit")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(stage_app, name="stage")


class _State:
    workspace: Path | None = None
    verbose: bool = False
    json: bool = False


STATE = _State()

KeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--key", envvar="AEGIS_KEY", help="Your private key (the actor in the audit log)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON instead of a table.")]
AdminKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--admin-key",
        envvar="AEGIS_ADMIN_KEY",
        help="Admin private key that signs the change (kept outside the workspace).",
    ),
]


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _ws():
    from aegis.workspace import find_workspace

    return find_workspace(STATE.workspace)


def _ledger(ws=None):
    """The command's one verified ledger (see :mod:`aegis.ledger`)."""
    from aegis.ledger import Ledger

    return Ledger.load(ws or _ws())


def _print_notes(notes: list[str], label: str = "note") -> None:
    """Prints notes (reconciled changes, ignored approval files) on stderr."""
    from aegis.text import printable

    err = _console(stderr=True)
    for note in notes:
        err.print(f"[yellow]{label}:[/yellow] {printable(note)}")


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


@app.callback()
def _global(
    workspace: Annotated[
        Path | None,
        typer.Option("--workspace", "-w", envvar="AEGIS_WORKSPACE", help="Workspace directory."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Tracebacks on errors.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of tables.")] = False,
) -> None:
    STATE.workspace = workspace
    STATE.verbose = verbose
    STATE.json = as_json


def _actor(ledger, key: Path | None) -> str:
    actor, _ = ledger.actor(key, role="operator")
    return actor
