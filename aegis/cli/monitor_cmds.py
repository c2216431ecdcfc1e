"""The production monitor's commands: ``aegis monitor`` and ``aegis incidents``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from aegis.cli._app import STATE, JsonOpt, KeyOpt, _console, _ledger, _print_json, app

incidents_app = typer.Typer(help="Incidents the production monitor opened.",
                            no_args_is_help=True)  # fmt: skip
app.add_typer(incidents_app, name="incidents")


@app.command()
def monitor(
    key: KeyOpt = None,
    model: Annotated[str | None, typer.Option(help="The model (when several).")] = None,
    every: Annotated[
        float | None, typer.Option(help="Pass again every this many seconds (default: once).")
    ] = None,
    passes: Annotated[int | None, typer.Option(help="With --every: stop after this many.")] = None,
    gateway: Annotated[
        str | None,
        typer.Option(help="The gateway's URL: a rollback is contained once it serves the target."),
    ] = None,
    feedback: Annotated[
        Path | None,
        typer.Option(help='True labels, JSON lines {"request": ID, "labels": [...]}.'),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Test the prediction log's new windows against the served releases' references, and
    contain confirmed breaches as the release's policy says (rollback, throttle, retrain)."""
    from aegis.errors import UsageError
    from aegis.monitor.run import monitor_pass

    if every is not None and every <= 0:
        raise UsageError(f"--every {every}: seconds, > 0")
    if passes is not None and passes < 1:
        raise UsageError(f"--passes {passes}: at least 1")
    labels = None
    if feedback is not None:
        from aegis.monitor.feedback import read_feedback

        labels = read_feedback(feedback)
    from aegis.events import EventOutbox

    console = _console(stderr=True)
    outbox = EventOutbox()  # one for every pass: an event Prefect did not take goes next time
    done = 0
    while True:
        report = monitor_pass(_ledger(), key_path=key, model=model, events=outbox,
                              gateway=gateway, feedback=labels,
                              progress=lambda line: console.print(line, markup=False))  # fmt: skip
        done += 1
        if STATE.json or as_json:
            _print_json(report.to_json())
        else:
            tested, opened = sum(report.windows.values()), len(report.incidents)
            _console().print(f"{tested} window(s) tested, {opened} incident(s) opened, "
                             f"{report.skipped_segments} segment(s) gone before read")  # fmt: skip
            for incident in report.incidents:
                _console().print(
                    f"incident {incident.id}: {', '.join(incident.signals)} on {incident.model}@"
                    f"{incident.version} (top client share {incident.top_client_share:.0%}); "
                    f"detected {incident.time_to_detect_s:.1f} s after the first bad request; "
                    f"action {incident.action} ({incident.why})",
                    markup=False,
                )
            for done in report.contained:
                _console().print(f"incident {done['incident']}: {done['result']}"
                                 + (f" at {done['contained']}" if done.get("contained") else ""),
                                 markup=False)  # fmt: skip
        if every is None or (passes is not None and done >= passes):
            return
        time.sleep(every)


@incidents_app.command("list")
def incidents_list(as_json: JsonOpt = False) -> None:
    """Every incident on the audit log, oldest first."""
    from aegis.monitor.incidents import incidents

    found = incidents(_ledger())
    if STATE.json or as_json:
        _print_json([i.to_json() for i in found])
        return
    from rich.table import Table

    table = Table("id", "model", "signals", "first bad request", "detect s", "contain s", "action")
    for i in found:
        contain = "-" if i.time_to_contain_s is None else f"{i.time_to_contain_s:.1f}"
        table.add_row(i.id, f"{i.model}@{i.version}", ", ".join(i.signals), i.first_bad[:19],
                      f"{i.time_to_detect_s:.1f}", contain, i.action)  # fmt: skip
    _console().print(table)


@incidents_app.command("show")
def incidents_show(incident: Annotated[str, typer.Argument(help="An incident id.")],
                   as_json: JsonOpt = False) -> None:  # fmt: skip
    """One incident with its evidence."""
    from aegis.errors import UsageError
    from aegis.monitor.incidents import incidents

    found = next((i for i in incidents(_ledger()) if i.id == incident), None)
    if found is None:
        raise UsageError(f"no incident '{incident}' (aegis incidents list)")
    body = found.to_json()
    if STATE.json or as_json:
        _print_json(body)
        return
    for name, value in body.items():
        _console().print(f"{name}: {value}", markup=False)
