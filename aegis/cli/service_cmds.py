"""Commands that run Aegis as a service on a Prefect server: deploy, worker, watch."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from aegis.cli._app import STATE, JsonOpt, _console, _print_json, _ws, app

_Pool = Annotated[str, typer.Option("--pool", help="The Prefect work pool (type process).")]


def _require_server() -> str:
    from aegis.errors import ConfigError

    url = os.environ.get("PREFECT_API_URL", "")
    if not url:
        raise ConfigError(
            "PREFECT_API_URL is not set: point it at your Prefect server "
            "(e.g. http://127.0.0.1:4200/api; `prefect server start` runs one)"
        )
    return url


# Seconds a command gives a configured Prefect server that does not answer yet (one that is
# starting: a fresh database takes it about 20 s); 0, the default, refuses at once.
WAIT_ENV = "AEGIS_PREFECT_WAIT_S"


def _reachable(url: str) -> None:
    """The Prefect server at ``url`` answers ``/health``, waiting up to ``$AEGIS_PREFECT_WAIT_S``.

    Only "is a server there" is checked: a TLS answer, or 401/403 from a proxy in
    front of it, counts as one; trust and credentials are Prefect's client's to check,
    with its own settings.

    Raises:
        ConfigError: It does not answer in time, answers as no Prefect API would
            (404 on ``/health``), the URL is malformed, or the variable is not a
            number of seconds.
    """
    import time

    from aegis.errors import ConfigError

    raw = os.environ.get(WAIT_ENV, "0")
    try:
        patience = float(raw)
    except ValueError:
        patience = -1.0
    if not 0 <= patience <= 3600:  # NaN fails both
        raise ConfigError(f"{WAIT_ENV}={raw!r}: seconds to wait for the Prefect server, 0-3600")
    deadline = time.monotonic() + patience
    waiting = False
    while True:
        problem = _health_problem(url)
        if problem is None:
            return
        final, reason = problem
        if final or time.monotonic() >= deadline:
            raise ConfigError(f"Prefect server unreachable at {url}: {reason}")
        if not waiting:
            _console(stderr=True).print(
                f"waiting up to {patience:g} s for the Prefect server at {url} ...", markup=False
            )
            waiting = True
        time.sleep(0.3)


def _health_problem(url: str) -> tuple[bool, str] | None:
    """None if a server answers at ``url``, else (whether waiting cannot mend it, why)."""
    import http.client
    import ssl
    import urllib.error
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(url.rstrip("/") + "/health")
    # credentials in the URL are Prefect's client's to send; urllib would take them for a host
    health = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    try:
        urllib.request.urlopen(health, timeout=10).close()
    except ValueError as exc:  # not a URL
        return True, str(exc)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return None
        return exc.code < 500, f"HTTP {exc.code} on /health"  # 5xx: starting, or a proxy's
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLError):
            return None
        return False, str(exc.reason)
    except ssl.SSLError:
        return None
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, not HTTP at all
        return False, f"{type(exc).__name__}: {exc}"
    return None


def _configured_server_answers() -> None:
    """Before a flow starts: a configured server answers, or one clear error line (exit 2).

    Without ``PREFECT_API_URL`` the flow runs on Prefect's in-process server.
    """
    url = os.environ.get("PREFECT_API_URL")
    if url:
        _reachable(url)


@app.command()
def deploy(
    pool: _Pool = "aegis",
    name: Annotated[str, typer.Option("--name", help="Deployment name (flow/NAME).")] = "aegis",
    as_json: JsonOpt = False,
) -> None:
    """Register watch, retrain (schedule + arrival trigger), promote, rollback on the server."""
    from aegis.cli.data_cmds import _prefect_environment

    url = _require_server()
    _reachable(url)
    ws = _ws()
    _prefect_environment(ws)
    from flows.deploy import deploy_all

    with _console(stderr=True).status(f"registering deployments on {url} ..."):
        deployed = deploy_all(ws.root, pool=pool, name=name)
    if STATE.json or as_json:
        from dataclasses import asdict

        _print_json([asdict(d) for d in deployed])
        return
    from rich.table import Table

    table = Table(title=f"deployments on {url} (work pool '{pool}')")
    for col in ("deployment", "schedule", "triggers", "id"):
        table.add_column(col, overflow="fold")
    for d in deployed:
        table.add_row(d.name, d.schedule or "-", str(d.triggers), d.id)
    out = _console()
    out.print(table)
    out.print(f"next: `aegis worker --pool {pool}` runs them (in this workspace)")


@app.command()
def worker(pool: _Pool = "aegis") -> None:
    """Run a Prefect worker for this workspace's deployments (it replaces this process)."""
    url = _require_server()
    _reachable(url)
    ws = _ws()
    from aegis.ledger import Ledger

    Ledger.load(ws)  # refuse to serve a workspace that does not verify
    env = {
        **os.environ,
        "AEGIS_WORKER_WORKSPACE": str(ws.root.resolve()),  # runs for another one are refused
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    prefect = Path(sys.executable).parent / "prefect"
    argv = [str(prefect), "worker", "start", "--pool", pool, "--type", "process"]
    _console(stderr=True).print(f"worker for {ws.root} on {url}, pool '{pool}'")
    sys.stderr.flush()
    os.execve(argv[0], argv, env)


@app.command()
def watch(
    polls: Annotated[int, typer.Option("--polls", min=1, help="Polls before it ends.")] = 2,
    as_json: JsonOpt = False,
) -> None:
    """List triggers.sources now and report new complete deliveries to the server (the watch flow).

    A delivery is reported once two polls, triggers.poll_interval apart, saw it unchanged.
    """
    from aegis.cli.data_cmds import _prefect_environment

    url = _require_server()
    _reachable(url)
    ws = _ws()
    _prefect_environment(ws)
    from flows.watch import short_run
    from flows.watch import watch as watch_flow

    lasts = polls * ws.params().triggers.poll_interval
    with _console(stderr=True).status(f"watching {ws.root} sources ..."), short_run(lasts_s=lasts):
        emitted = watch_flow(workspace=str(ws.root), polls=polls)
    if STATE.json or as_json:
        _print_json(emitted)
        return
    from aegis.text import printable

    out = _console()
    for e in emitted:  # names come from the source: never rich markup, never escapes
        out.print(f"reported {printable(e['location'])} ('{printable(e['dataset'])}', "
                  f"{e['digest'][:19]}): event {e['event']}", markup=False)  # fmt: skip
    if not emitted:
        out.print("nothing new to report")
