"""The gateway's commands: ``aegis serve``, ``keys api ...``, ``audit import-serving``."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from aegis.cli._app import (
    STATE,
    JsonOpt,
    KeyOpt,
    _console,
    _ledger,
    _print_json,
    _ws,
    app,
    audit_app,
    keys_app,
)

api_app = typer.Typer(help="API clients of the gateway (bearer tokens).", no_args_is_help=True)
keys_app.add_typer(api_app, name="api")


@app.command()
def serve(
    target: Annotated[
        str | None,
        typer.Argument(
            help="NAME#prod (default: <train.model_name>#prod) or NAME@vN; with --identity, "
            "a sealed export's directory"
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    workers: Annotated[int, typer.Option(help="Worker processes (> 1 needs --redis).")] = 1,
    key: Annotated[
        Path | None,
        typer.Option(
            "--key", envvar="AEGIS_SERVING_KEY", help="The gateway's serving-role private key."
        ),
    ] = None,
    redis: Annotated[
        str | None,
        typer.Option("--redis", envvar="AEGIS_REDIS_URL", help="redis://... for shared limits."),
    ] = None,
    identity: Annotated[
        Path | None,
        typer.Option(
            "--identity",
            envvar="AEGIS_SERVING_IDENTITY",
            help="Serve the sealed export TARGET, decrypted in memory with this X25519 serving "
            "identity (one worker; no hot reload: it serves what it decrypted until restarted).",
        ),
    ] = None,
) -> None:
    """Serve the verified production model over authenticated, rate-limited HTTP.

    A registry target is hot-reloaded when prod moves; a sealed export (--identity) is not.
    """
    from aegis.serve.runner import plan, run

    ws = _ws()
    with _console(stderr=True).status("verifying the release to serve ..."):
        serve_plan, _ = plan(
            ws, target=target, host=host, port=port, workers=workers, key=key, redis=redis,
            identity=identity,
        )  # fmt: skip
    release = serve_plan.served.release
    print(
        f"serving {release} ({release.model_digest[:19]}) from {serve_plan.target} on "
        f"{serve_plan.url}: {serve_plan.workers} worker(s), limits {serve_plan.limits}, "
        f"{serve_plan.clients} active client(s)"
        + (" (sealed export: no hot reload)" if serve_plan.sealed else ""),
        flush=True,
    )
    assert key is not None  # plan() refused a missing key
    run(ws, serve_plan, host=host, port=port, key=key, redis=redis)


@api_app.command("new")
def api_new(
    name: Annotated[str, typer.Option("--name", help="The client's name (logs, metrics).")],
    scopes: Annotated[str, typer.Option("--scopes", help="predict, admin or predict,admin")] = (
        "predict"
    ),
    rate: Annotated[str, typer.Option("--rate", help="Rows per window: N/s, N/m, N/h")] = "20/s",
    quota: Annotated[str, typer.Option("--quota", help="Rows per window, e.g. 10000/day")] = (
        "10000/day"
    ),
    key: KeyOpt = None,
) -> None:
    """Create an API client; its bearer token is printed once, alone on the last line."""
    from aegis.serve.client_ops import new_client
    from aegis.serve.clients import parse_limit, parse_scopes

    made = new_client(
        _ws(), name=name, scopes=parse_scopes(scopes), rate=parse_limit(rate, what="--rate"),
        quota=parse_limit(quota, what="--quota"), key_path=key,
    )  # fmt: skip
    c = made.client
    _console(stderr=True).print(
        f"[green]Created[/green] API client '{c.name}' ({c.id}; scopes {','.join(c.scopes)}; "
        f"rate {c.rate}, quota {c.quota}). The token below is shown only now:"
    )
    sys.stdout.write(made.token + "\n")


@api_app.command("list")
def api_list(as_json: JsonOpt = False) -> None:
    """List API clients: scopes, limits, status (tokens are never stored)."""
    from aegis.serve.clients import load_clients
    from aegis.serve.extraction import KeyReport, extraction_reports

    ledger = _ledger()
    clients = load_clients(ledger)
    reports = extraction_reports(ledger.ws, ledger.trust)
    rows = []
    for c in clients.clients:
        seen = reports.get(c.id, KeyReport(0, 0.0, False, None, None))
        rows.append({k: v for k, v in c.to_json().items() if k != "token_hash"} | {
            "queries": seen.queries, "extraction_score": seen.extraction_score,
            "flagged": seen.flagged, "flagged_by": seen.signal,
        })  # fmt: skip
    if STATE.json or as_json:
        _print_json(rows)
        return
    from rich.table import Table

    table = Table()
    for col in ("name", "id", "scopes", "rate", "quota", "status", "queries", "extraction"):
        table.add_column(col)
    for r in rows:
        extraction = f"{r['extraction_score']:.2f}" + (
            f" [red]flagged ({r['flagged_by']})[/red]" if r["flagged"] else ""
        )
        table.add_row(
            r["name"], r["id"], ",".join(r["scopes"]), r["rate"], r["quota"], r["status"],
            str(r["queries"]), extraction,
        )  # fmt: skip
    _console().print(table)


@api_app.command("revoke")
def api_revoke(
    name: Annotated[str, typer.Argument(help="The client to revoke.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (audited).")] = "",
    key: KeyOpt = None,
) -> None:
    """Revoke an API client: the gateway refuses its token (403) from the next request."""
    from aegis.serve.client_ops import revoke_client

    revoked = revoke_client(_ws(), name, reason=reason, key_path=key)
    _console().print(f"[green]Revoked[/green] API client '{revoked.name}' ({revoked.id})")


@api_app.command("resign")
def api_resign(
    reason: Annotated[str, typer.Option("--reason", help="Why (audited).")] = "",
    key: KeyOpt = None,
) -> None:
    """Re-sign a client list whose operator was revoked (the gateway admits no one until then)."""
    from aegis.serve.client_ops import resign_clients

    adopted = resign_clients(_ws(), reason=reason, key_path=key)
    active = [c.name for c in adopted.clients if c.status == "active"]
    _console().print(
        f"[green]Re-signed[/green] the client list of revoked operator '{adopted.signer}': "
        f"{len(active)} active client(s) now on your signature: {', '.join(active) or '-'}"
    )


@audit_app.command("import-serving")
def import_serving(key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Audit the gateway's signed records (alerts, prediction-log segments) not yet imported."""
    from aegis.serve.records import import_records

    ledger = _ledger()
    from aegis.cli._app import _actor

    done = import_records(ledger, actor=_actor(ledger, key))
    if STATE.json or as_json:
        _print_json(asdict(done))
        return
    where = f" (audit entry {done.seq})" if done.seq is not None else ""
    _console().print(
        f"imported {done.alerts} alert(s) and {done.segments} log segment(s){where}"
        + (f"; {done.refused} line(s) did not verify and were left out" if done.refused else "")
    )


watermark_app = typer.Typer(help="The gateway's watermark: prove a copy was trained on us.",
                            no_args_is_help=True)  # fmt: skip
app.add_typer(watermark_app, name="watermark")


@watermark_app.command("verify")
def watermark_verify(
    suspect: Annotated[
        str,
        typer.Argument(
            help="A surrogate or Aegis checkpoint directory, or an http:// gateway URL."
        ),
    ],
    token: Annotated[str | None, typer.Option(help="http:// suspects: a bearer token.")] = None,
    queries: Annotated[int, typer.Option(help="Recorded watermarks asked (at most).")] = 100,
    null_agreement: Annotated[
        float | None,
        typer.Option(
            help="Agreement of independent models with the wrong labels (two classes: required)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask SUSPECT the watermarked inputs on record; a p-value under "independent model"."""
    from aegis.attack.oracle import OracleError, suspect_predictor
    from aegis.errors import UsageError
    from aegis.serve.evidence import verify_watermark, watermark_records

    if not 1 <= queries <= 100:
        raise UsageError(f"--queries {queries}: 1 to 100")
    ledger = _ledger()
    records = watermark_records(ledger)
    predict, what = suspect_predictor(suspect, token=token)
    classes = max((r.classes for r in records), default=2)
    try:
        verdict = verify_watermark(records, predict, classes=classes, max_queries=queries,
                                   null_agreement=null_agreement)  # fmt: skip
    except OracleError as exc:
        raise UsageError(f"the suspect could not be queried: {exc}") from None
    result = verdict.to_json() | {"suspect": suspect, "suspect_kind": what}
    if STATE.json or as_json:
        _print_json(result)
        return
    _console().print(
        f"{suspect}: agrees with {verdict.matches} of {verdict.queries} watermarked answers "
        f"(an independent model: at most {verdict.null_agreement:.1%}); p = {verdict.p_value:.3g}"
    )
