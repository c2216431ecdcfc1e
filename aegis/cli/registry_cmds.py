"""Registry commands: ``aegis status`` and ``aegis rollback``.

``aegis rollback`` runs the rollback core directly (no Prefect start-up: an
incident wants prod moved in seconds); ``--flow`` runs the same steps as the
``rollback`` Prefect flow instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from aegis.cli._app import (
    STATE,
    JsonOpt,
    KeyOpt,
    _console,
    _ledger,
    _print_json,
    _print_notes,
    _ws,
    app,
)
from aegis.text import printable


def _num(value: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def _approvals_cell(a) -> str:
    if not a.requested and not a.approved_by and not a.rejected_by and not a.ignored:
        return "-"
    parts = []
    if a.requested:
        who = printable(a.requester or "?")
        parts.append(f"requested by {who}" + (" (expired)" if a.expired else ""))
    if a.approved_by:
        parts.append(f"approved: {printable(', '.join(a.approved_by))}")
    if a.rejected_by:
        parts.append(f"[red]rejected: {printable(', '.join(a.rejected_by))}[/red]")
    parts += [f"[red]{printable(note)}[/red]" for note in a.ignored]
    return "; ".join(parts)


def _stage_cell(v) -> str:
    cells = []
    for stage in v.stages:
        if stage == "prod":
            cells.append("[bold green]prod[/bold green]")
        elif stage == "bad":
            cells.append("[red]bad[/red]")
        else:
            cells.append(stage)
    return ", ".join(cells) or "-"


def _trigger_cell(trigger: dict) -> str:
    from aegis.triggers.record import Trigger

    parsed = Trigger.from_dict(trigger)
    return printable(parsed.describe()) if parsed else "-"


def _status_table(model) -> Any:
    from rich.table import Table

    title = f"{model.model}: prod {model.prod or 'none'}"
    if model.bad:
        title += f", marked bad {', '.join(model.bad)}"
    if model.suspect:
        title += f", suspect (monitor rollback) {', '.join(model.suspect)}"
    table = Table(title=title)
    for col in ("version", "stage", "clean", "robust", "ε"):
        table.add_column(col, no_wrap=True)
    for col in ("signer", "trigger", "request / approvals", "created (UTC)", "model digest"):
        table.add_column(col, overflow="fold")
    for v in model.versions:
        table.add_row(
            v.version + ("" if v.present else " (in DVC)"),
            _stage_cell(v),
            _num(v.clean_acc),
            _num(v.robust_acc),
            _num(v.epsilon, "{:.2f}"),
            printable(v.signer or "-"),
            _trigger_cell(v.trigger),
            _approvals_cell(v.approvals),
            (v.created or "-")[:16].replace("T", " "),
            (v.model_digest or "-").removeprefix("sha256:")[:12],
        )
    return table


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """The registry: versions, stages, metrics, signer, approvals, prod and bad marks."""
    from dataclasses import asdict

    from aegis.data.reputation import supplier_reputations
    from aegis.monitor.incidents import incidents
    from aegis.registry.status import registry_status

    ledger = _ledger()
    models, reconciled = registry_status(ledger)
    suppliers = supplier_reputations(ledger)
    recent = incidents(ledger)[-5:]
    _print_notes(reconciled, "reconciled")
    if STATE.json or as_json:
        records = [asdict(r) | {"blocked": r.blocked} for r in suppliers]
        _print_json({"models": [asdict(m) for m in models], "suppliers": records,
                     "incidents": [i.to_json() for i in recent]})  # fmt: skip
        return
    out = _console()
    if not models:
        out.print("no registered models yet (a retrain run makes a release)")
    for model in models:
        out.print(_status_table(model))
    screened = [r for r in suppliers if r.versions]
    if screened:
        out.print("suppliers (rows the screens flagged, since re-admission):")
        for r in screened:
            state = " [red]blocked at ingest[/]" if r.blocked else ""
            out.print(f"  {printable(r.supplier)}: {r.flagged} of {r.rows} ({r.rate:.1%}) over "
                      f"{r.versions} version(s), limit {r.max_rate:.0%}{state}")  # fmt: skip
    if recent:
        out.print("recent incidents (aegis incidents list):")
        for i in recent:
            ttc = i.time_to_contain_s
            contain = "alert only" if ttc is None else f"contained after {ttc:.1f} s"
            ttd, signals = i.time_to_detect_s, ", ".join(i.signals)
            out.print(f"  {i.id} {i.model}@{i.version} {signals}: detected {ttd:.1f} s "
                      f"after the first bad request; {contain}")  # fmt: skip


def _sign_rollback_request(ws, out: Path, *, key: Path, reason: str, target, model) -> None:
    import json

    from aegis.fileutil import atomic_write
    from aegis.pipeline.layout import check_user_output
    from aegis.registry.rollback_request import sign_request

    document = sign_request(
        _ledger(ws), operator_key_path=key, reason=reason, to=target, model=model
    )
    path = check_user_output(out)
    atomic_write(path, json.dumps(document, sort_keys=True).encode() + b"\n", mode=0o600)
    _console().print(
        f"signed a rollback request -> {path} (valid until {document['body']['expires']}, "
        f"once); run it on the server with:\n  prefect deployment run rollback/aegis "
        f'--param request="$(cat {path})"'
    )


@app.command()
def rollback(
    reason: Annotated[str, typer.Option("--reason", help="Why (goes to the audit log).")],
    key: KeyOpt = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to", help="NAME@vN [default: the latest earlier prod version not marked bad]."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Model name, if several are registered.")
    ] = None,
    use_flow: Annotated[
        bool, typer.Option("--flow", help="Run it as the `rollback` Prefect flow.")
    ] = False,
    sign_request: Annotated[
        Path | None,
        typer.Option(
            "--sign-request",
            help="Only sign a rollback request into this file (for the `rollback` deployment "
            "on a Prefect server, which holds no operator key); valid 15 minutes, once.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verified rollback: prod back to a re-verified earlier version; the current one marked bad."""
    from aegis.errors import UsageError
    from aegis.registry.targets import parse_target

    target = parse_target(to) if to else None
    if key is None:
        raise UsageError("a rollback is an operator's decision: give --key OPERATOR_KEY")
    ws = _ws()
    err = _console(stderr=True)
    if sign_request is not None:
        _sign_rollback_request(ws, sign_request, key=key, reason=reason, target=target,
                               model=model)  # fmt: skip
        return
    if use_flow:
        from aegis.cli.data_cmds import _prefect_environment

        _prefect_environment(ws)
        with err.status("starting Prefect and running the rollback flow ..."):
            from aegis.cli.service_cmds import _configured_server_answers
            from flows.rollback import operator_session
            from flows.rollback import rollback as rollback_flow

            _configured_server_answers()

            with operator_session(Path(key).expanduser().resolve()):
                outcome = rollback_flow(workspace=str(ws.root), reason=reason, to=to, model=model)
    else:
        from aegis.registry.rollback import rollback as do_rollback

        with err.status("verifying the rollback target ..."):
            outcome = do_rollback(
                _ledger(ws), to=target, reason=reason, operator_key_path=key, model=model
            )
    _print_notes(outcome.reconciled, "reconciled")
    if STATE.json or as_json:
        from dataclasses import asdict

        _print_json(asdict(outcome))
        return
    out = _console()
    out.print(
        f"[green]Rolled back[/green] {outcome.model}: prod {outcome.from_version} -> "
        f"{outcome.to_version} (verified, model {outcome.to_model_digest[:19]}); "
        f"{outcome.from_version} marked bad"
    )
    out.print(
        f"reason: {printable(outcome.reason)}; audit entry {outcome.audit_seq}; "
        f"{outcome.seconds:.2f}s"
    )
