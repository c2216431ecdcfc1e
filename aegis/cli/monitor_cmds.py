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


@app.command()
def drill(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="An empty folder (default: a new temporary one).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rehearse the incident playbook in a scratch workspace with its own keys: a degraded
    model released and promoted, replayed through a real gateway, detected by the monitor
    and rolled back automatically; prints time-to-detect and time-to-contain."""
    from aegis.drill import run_drill
    from aegis.errors import AegisError
    from aegis.workspace import find_workspace

    try:
        policy = find_workspace(STATE.workspace).root  # rehearse this workspace's policy
    except AegisError:
        policy = None
    console = _console(stderr=True)
    result = run_drill(directory, policy_from=policy,
                       say=lambda line: console.print(line, markup=False))  # fmt: skip
    if STATE.json or as_json:
        _print_json(result.to_json())
        return
    contain = "-" if result.time_to_contain_s is None else f"{result.time_to_contain_s:.1f} s"
    _console().print(
        f"drill: incident {result.incident} ({', '.join(result.signals)}), {result.action} to "
        f"{result.rolled_back_to}; time to detect {result.time_to_detect_s:.1f} s, to contain "
        f"{contain} (from the first bad request; monitor every {result.monitor_interval_s:g} s)"
        f"; {result.seconds:.0f} s in all. Workspace: {result.workspace}",
        markup=False,
    )


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


# -- aegis report ----------------------------------------------------------------------------

report_app = typer.Typer(help="Self-contained HTML reports.", no_args_is_help=True)
app.add_typer(report_app, name="report")


@report_app.command("incidents")
def report_incidents(
    out: Annotated[
        Path | None, typer.Option(help="The HTML file (default: incidents-report.html here).")
    ] = None,
    last: Annotated[
        int | None, typer.Option(help="Plot the newest this many windows (default: all).")
    ] = None,
) -> None:
    """The monitor's incidents and every tested window's signals against their thresholds."""
    from aegis.errors import UsageError
    from aegis.fileutil import atomic_write
    from aegis.monitor.incidents import incidents
    from aegis.monitor.report import render_incident_report
    from aegis.monitor.windows import read_windows

    if last is not None and last < 1:
        raise UsageError(f"--last {last}: at least 1")
    target = (out or Path("incidents-report.html")).absolute()
    _check_out(target)
    ledger = _ledger()
    page = render_incident_report(windows=read_windows(ledger.ws, last=last),
                                  incidents=incidents(ledger),
                                  title=f"Aegis incidents: {ledger.ws.root.name}")  # fmt: skip
    atomic_write(target, page.encode())
    _console().print(str(target), markup=False, soft_wrap=True)


def _check_out(path: Path) -> None:
    """Refuses an --out that is not a new or regular file in an existing directory."""
    import os
    import stat

    from aegis.errors import UsageError

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a symbolic link" if stat.S_ISLNK(mode)
                else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file")  # fmt: skip
        raise UsageError(f"--out {path}: {kind}; give a file name")
    if not path.parent.is_dir():
        raise UsageError(f"--out {path}: no directory {path.parent}")
