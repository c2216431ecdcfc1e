"""Commands of promotion: ``aegis promote`` (the promote flow) and ``aegis approve``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aegis.cli._app import STATE, JsonOpt, _console, _ledger, _print_json, _print_notes, _ws, app
from aegis.cli.data_cmds import _prefect_environment
from aegis.text import printable

_OperatorKey = Annotated[
    Path,
    typer.Option("--key", envvar="AEGIS_KEY", help="Operator private key (the requester)."),
]
_ApproverKey = Annotated[
    Path, typer.Option("--key", envvar="AEGIS_KEY", help="Approver private key.")
]


def gates_table(rows, *, title: str = "promotion gates"):
    """A rich table of gate rows: gate, measured value, threshold, pass/fail."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("gate", "measured", "threshold", "result"):
        table.add_column(col, overflow="fold")
    for r in rows:
        verdict = "[green]pass[/]" if r.passed else "[red]FAIL[/]"
        table.add_row(r.gate, r.measured, r.threshold, verdict)
    return table


@app.command()
def promote(
    target: Annotated[str, typer.Argument(help="NAME@vN (or NAME@vN.0.0) to promote to prod.")],
    key: _OperatorKey,
    wait: Annotated[
        bool, typer.Option("--wait", help="Pause until approved (promote.wait_timeout).")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Complete a pending promotion (re-verifies).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Promote a release to prod: verify, gates, signed request, approvals (the promote flow).

    Exits 0 when promoted or pending approval; 1 when a gate fails, the release does
    not verify, it was rejected, or --wait timed out.
    """
    from aegis.approval import GateFailure
    from aegis.errors import UsageError
    from aegis.registry.targets import parse_target

    if wait and resume:
        raise UsageError("--wait and --resume exclude each other (a resume never waits)")
    parsed = parse_target(target)
    ws = _ws()
    _prefect_environment(ws)
    from aegis.cli.service_cmds import _configured_server_answers
    from flows.promote import operator_session, short_run
    from flows.promote import promote as promote_flow  # it verifies the ledger itself

    _configured_server_answers()

    try:
        with (
            _console(stderr=True).status(f"promote flow: {parsed} ..."),
            operator_session(key.expanduser().resolve()),  # the key never is a flow parameter
            short_run(lasts_s=_waits_s(ws) if wait else 0.0),  # a waiting run keeps its heartbeat
        ):
            outcome = promote_flow(workspace=str(ws.root), target=str(parsed), wait=wait,
                                   resume=resume)  # fmt: skip
    except GateFailure as exc:
        _console(stderr=True).print(gates_table(exc.rows, title=f"promotion gates of {parsed}"))
        raise
    if STATE.json or as_json:
        from dataclasses import asdict

        _print_json(asdict(outcome))
        return
    _print_notes(outcome.notes)
    out = _console()
    if outcome.gates:
        out.print(gates_table(outcome.gates, title=f"promotion gates of {parsed}"))
    name = f"{outcome.model}@{outcome.version}"
    if outcome.status == "promoted":
        was = f" (was {outcome.previous_prod})" if outcome.previous_prod else ""
        out.print(f"[green]promoted[/green] {name} to prod{was}; approved by "
                  f"{', '.join(outcome.approvers)}")  # fmt: skip
    elif outcome.status == "already-prod":
        out.print(f"{name} already holds prod; nothing to do")
    else:
        out.print(
            f"[yellow]pending[/yellow] {name}: {len(outcome.approvers)} of {outcome.required} "
            f"approval(s); request {outcome.request} expires {outcome.expires}.\n"
            f"An approver (another owner) runs `aegis approve {name} --key APPROVER`, "
            f"then `aegis promote {name} --resume --key OPERATOR`."
        )


def _waits_s(ws) -> float:
    """How long ``promote --wait`` may pause: ``promote.wait_timeout``."""
    from aegis.config import duration_seconds

    return duration_seconds(ws.params().promote.wait_timeout)


@app.command()
def approve(
    target: Annotated[str, typer.Argument(help="NAME@vN whose promotion request to decide.")],
    key: _ApproverKey,
    reject: Annotated[bool, typer.Option("--reject", help="Reject instead of approve.")] = False,
    reason: Annotated[str, typer.Option("--reason", help="Why (required with --reject).")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Sign an approval (or rejection) of a pending promotion; resumes a waiting run."""
    from aegis.registry.promotion import approve as do_approve
    from aegis.registry.targets import parse_target

    parsed = parse_target(target)
    ws = _ws()
    outcome = do_approve(
        _ledger(ws), parsed, approver_key_path=key.expanduser(), reject=reject, reason=reason
    )
    resumed, state = None, None
    if outcome.waiting_run:
        _prefect_environment(ws)
        from aegis.pipeline.layout import Layout
        from aegis.registry.approvals_store import waiting_run
        from flows.promote import resume_waiting

        layout = Layout.of(ws)
        resumed, state = resume_waiting(
            outcome.waiting_run,
            approver=outcome.owner,
            decision=outcome.decision,
            alive=lambda: waiting_run(layout, outcome.model, outcome.version) is not None,
        )
    if STATE.json or as_json:
        from dataclasses import asdict

        _print_json({**asdict(outcome), "resumed": resumed, "run_state": state})
        return
    _print_notes(outcome.notes)
    name = f"{outcome.model}@{outcome.version}"
    verb = "[green]approved[/green]" if outcome.decision == "approve" else "[red]rejected[/red]"
    out = _console()
    out.print(f"{verb} {name} as {printable(outcome.owner)} (audited; copy {outcome.path}); "
              f"{len(outcome.approvers)} of {outcome.required} approval(s)")  # fmt: skip
    run = outcome.waiting_run
    if resumed == "resumed":
        out.print(f"resumed the waiting promote run {run}: it counts this decision now")
    elif resumed == "finished":
        out.print(f"the waiting promote run {run} had already ended ({state}); "
                  f"`aegis status` shows whether {name} holds prod, and "
                  f"`aegis promote {name} --resume` completes it if not")  # fmt: skip
    elif resumed is not None:
        out.print(
            f"the waiting promote run {run} was not resumed ({resumed}); the decision is "
            f"recorded, and `aegis promote {name} --resume` completes the promotion"
        )
