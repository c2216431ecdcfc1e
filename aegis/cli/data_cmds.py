"""Commands on data: demo import, publish, ingest, validate, quarantine, the retrain flow."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from aegis.cli._app import (
    STATE,
    JsonOpt,
    KeyOpt,
    _actor,
    _console,
    _ledger,
    _print_json,
    _ws,
    app,
    data_app,
    quarantine_app,
    stage_app,
)
from aegis.text import printable

# -- data --------------------------------------------------------------------------


@data_app.command("import-sklearn")
def data_import_sklearn(
    name: Annotated[str, typer.Argument(help="digits | breast_cancer")],
    out: Annotated[Path, typer.Option(help="Directory to write <name>.parquet into.")],
) -> None:
    """Write a demo dataset from scikit-learn's bundled copy (no download)."""
    from aegis.data.sklearn_import import import_sklearn
    from aegis.pipeline.layout import check_user_output

    path = import_sklearn(name, out=check_user_output(out))
    _console().print(f"[green]Wrote[/green] {path}")


@data_app.command("publish")
def data_publish(
    src: Annotated[Path, typer.Argument(help="A CSV/Parquet file or a directory of them.")],
    name: Annotated[str, typer.Option(help="Dataset name.")],
    key: Annotated[Path, typer.Option("--key", envvar="AEGIS_KEY", help="Supplier private key.")],
    out: Annotated[
        str,
        typer.Option(
            help="Signed dataset directory to create, or an empty s3://bucket/prefix to upload "
            "it to (the signature goes last, so a watcher never takes a partial delivery)."
        ),
    ],
) -> None:
    """Make a signed dataset: Parquet + manifest.json + model_signing bundle."""
    import tempfile

    from aegis.data.publish import publish_dataset, upload_dataset
    from aegis.pipeline.layout import check_user_output

    if out.startswith("s3://"):
        with tempfile.TemporaryDirectory(prefix="aegis-publish-") as tmp:
            manifest = publish_dataset(src, name=name, key_path=key, out=Path(tmp) / name)
            upload_dataset(Path(tmp) / name, out)
    else:
        manifest = publish_dataset(src, name=name, key_path=key, out=check_user_output(Path(out)))
    _console().print(
        f"[green]Published[/green] '{name}': {len(manifest.files)} file(s), "
        f"{manifest.rows} rows, signed -> {out}"
    )


# -- ingest and the retrain flow ---------------------------------------------------


def _ingest_summary(result, as_json: bool) -> None:
    from rich.table import Table

    if STATE.json or as_json:
        from dataclasses import asdict

        _print_json(asdict(result))
        return
    table = Table(title=f"accepted dataset '{result.name}'", show_header=False)
    rows = [
        ("digest", result.digest),
        ("created", result.created),
        ("supplier", f"{result.supplier} ({result.supplier_owner})"),
        ("files / rows / bytes", f"{result.files} / {result.rows} / {result.bytes}"),
        ("DVC version", f"{result.dvc_md5} (commit {result.commit[:10]})"),
        ("actor", result.actor[:12]),
        ("older than last accepted", "yes (allowed)" if result.allowed_older else "no"),
        ("audit entry", str(result.audit_seq)),
    ]
    for k, v in rows:
        table.add_row(k, v)
    _console().print(table)


def _require_key_for_older(allow_older: bool, key: Path | None) -> None:
    from aegis.errors import UsageError

    if allow_older and key is None:
        raise UsageError("--allow-older is an operator's decision: give --key OPERATOR_KEY")


@app.command()
def ingest(
    source: Annotated[str, typer.Argument(help="A dataset directory or s3://bucket/prefix.")],
    name: Annotated[str, typer.Option(help="The dataset name the manifest must carry.")],
    allow_older: Annotated[
        bool, typer.Option(help="Accept a dataset older than the last accepted one (audited).")
    ] = False,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify a signed dataset and version it with DVC (refuses anything unverifiable)."""
    from aegis.data.ingest import ingest as do_ingest

    _require_key_for_older(allow_older, key)
    ledger = _ledger()
    err = _console(stderr=True)
    with err.status(f"verifying {source} ..."):
        result = do_ingest(
            ledger,
            source,
            name=name,
            actor=_actor(ledger, key),
            allow_older=allow_older,
            on_retry=lambda n, e: err.print(f"retry {n}: {e}"),
        )
    _ingest_summary(result, as_json)


def _prefect_environment(ws) -> None:
    """Points Prefect at the workspace's home unless a server is configured."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # An in-process server would register Prefect's block types (loading every installed
    # collection, prefect-dask's Dask among them) on each start: 2 s, and Aegis uses no block.
    os.environ.setdefault("PREFECT_SERVER_REGISTER_BLOCKS_ON_START", "false")
    # Prefect's default (30 s) is too short for the in-process server on a loaded 2-core host.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    if not os.environ.get("PREFECT_API_URL"):
        os.environ["PREFECT_HOME"] = str(ws.prefect_home)
    if not STATE.verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
        # Prefect's background services log through loggers named after their class, outside
        # the "prefect" tree, so PREFECT_LOGGING_LEVEL misses them ("EventsWorker - Still
        # processing items" at exit); they are Prefect's bookkeeping, not the command's result.
        import logging

        for service in ("EventsWorker", "APILogWorker"):
            logging.getLogger(service).setLevel(logging.ERROR)


@app.command()
def run(
    source: Annotated[str, typer.Option(help="A dataset directory or s3://bucket/prefix.")],
    name: Annotated[str, typer.Option(help="Dataset name.")],
    allow_older: Annotated[
        bool, typer.Option(help="Accept a dataset older than the last accepted one (audited).")
    ] = False,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the retrain flow under Prefect: verify, validate, store, train, evaluate, release.

    One run per workspace at a time: a run started while another (triggered or
    manual) is under way waits for it. A dataset already accepted and released
    ends "already current" with nothing changed.
    """
    _require_key_for_older(allow_older, key)
    from aegis.ledger import actor_in, load_trust

    ws = _ws()
    _prefect_environment(ws)
    actor, _ = actor_in(ws, load_trust(ws), key)  # the flow verifies the whole ledger
    err = _console(stderr=True)
    with err.status("starting Prefect and running the retrain flow ..."):
        from aegis.cli.service_cmds import _configured_server_answers
        from flows.retrain import manual_run, retrain

        _configured_server_answers()  # after the imports: a server that is starting gets them

        # who runs it travels in this process's context, never as a flow parameter
        with manual_run(actor, allow_older=allow_older):
            run_result = retrain(workspace=str(ws.root), source=source, name=name)
    from aegis.pipeline.retrain import AlreadyCurrent

    if STATE.json or as_json:
        from dataclasses import asdict

        if isinstance(run_result, AlreadyCurrent):
            _print_json(asdict(run_result))
            return
        _print_json(
            {step: asdict(getattr(run_result, step)) if getattr(run_result, step) else None
             for step in _RUN_STEPS} | {"trigger": run_result.trigger.to_dict(),
                                        "status": run_result.status}
        )  # fmt: skip
        return
    if isinstance(run_result, AlreadyCurrent):
        _console().print(run_result.message() + "; nothing changed")
        return
    from aegis.cli.model_cmds import model_summary

    if run_result.ingest is not None:
        _ingest_summary(run_result.ingest, False)
    else:
        _console().print(f"completed the run of the stored '{name}' version (it was accepted "
                         "before, never released)")  # fmt: skip
    _validation_summary(ws, run_result.validate, False)
    model_summary(ws, run_result.train, run_result.evaluate, False)
    _release_summary(run_result.release)


_RUN_STEPS = ("ingest", "validate", "train", "evaluate", "release")


def _release_summary(release) -> None:
    out = _console()
    out.print(
        f"released [bold]{release.tag}[/bold] -> {release.directory} (signed, commit "
        f"{release.commit[:12]})"
    )
    out.print(f"  model digest:    {release.model_digest}")
    out.print(f"  evidence digest: {release.evidence_digest}")
    out.print(f"  dataset digest:  {release.dataset_digest}")
    out.print(f"  check it with: aegis verify {release.tag}")


# -- validation and quarantine ---------------------------------------------------------


def _validation_summary(ws, result, as_json: bool) -> None:
    if STATE.json or as_json:
        from dataclasses import asdict

        _print_json(asdict(result))
        return
    from rich.table import Table

    out = _console()
    table = Table(title=f"validation of '{result.name}'", show_header=False)
    e, rows = result.expectations, result.rows
    table.add_row("suite", f"{result.suite} ({e['passed']} passed, {e['failed']} failed)")
    table.add_row(
        "rows quarantined",
        f"{rows['quarantined']} of {rows['total']} ({rows['fraction']:.2%}, "
        f"gate {rows['max_fraction']:.0%})",
    )
    for reason, count in result.quarantine_reasons.items():
        table.add_row("  why", f"{count} x {reason}")
    drift = result.drift
    if drift.reference is None:
        table.add_row("drift (PSI)", "first validated version: no reference yet")
    else:
        worst = drift.worst
        table.add_row(
            "drift (PSI)",
            f"max {worst[1]:.3f} ({worst[0]}) vs {drift.reference[:19]}, gate {drift.max_psi}: "
            + ("[green]pass[/]" if drift.passed else "[red]fail[/]"),
        )
        top = sorted(drift.features.items(), key=lambda kv: -kv[1])[:5]
        table.add_row("  top columns", ", ".join(f"{k} {v:.3f}" for k, v in top))
        if drift.label is not None:
            table.add_row("  label", f"{drift.label:.3f}")
    table.add_row("report", str(ws.root / result.report))
    out.print(table)


@app.command()
def validate(
    name: Annotated[str, typer.Argument(help="An ingested dataset (data/NAME/).")],
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the dataset's expectation suite: quarantine bad rows, gate drift, keep evidence."""
    from aegis.pipeline.stages import push_stage, require_stage
    from aegis.pipeline.validate import record_validation, validate_dataset
    from aegis.retry import retry_io

    ws = _ws()
    require_stage(ws, name)
    ledger = _ledger(ws)
    actor = _actor(ledger, key)
    with _console(stderr=True).status(f"validating {name} ..."):
        result = validate_dataset(ledger, name, actor=actor)
        record_validation(ledger, result)
        params = ws.params().ingest
        retry_io(
            lambda: push_stage(ws, f"validate@{name}"),
            retries=params.io_retries,
            delay_s=params.io_retry_delay_s,
        )
    _validation_summary(ws, result, as_json)


@stage_app.command("validate")
def stage_validate(name: Annotated[str, typer.Option(help="Dataset name.")]) -> None:
    """The validate stage for `dvc repro`: writes its outputs, DVC records them."""
    from aegis.pipeline.validate import validate_dataset

    ledger = _ledger()
    actor, _ = ledger.actor(None)
    result = validate_dataset(ledger, name, actor=actor)
    _console().print(
        f"validated {name}: {result.rows['quarantined']} row(s) quarantined, report {result.report}"
    )


@quarantine_app.command("list")
def quarantine_list(as_json: JsonOpt = False) -> None:
    """Quarantined and released rows per dataset."""
    from dataclasses import asdict

    from aegis.data.quarantine import summarize, validated_version

    ledger = _ledger()
    names = sorted(p.stem for p in (ledger.ws.root / "quarantine").glob("*.parquet"))
    summaries = [summarize(ledger, n, validated_version(ledger, n)) for n in names]
    if STATE.json or as_json:
        _print_json([asdict(s) for s in summaries])
        return
    from rich.table import Table

    table = Table(title="quarantine")
    for col in ("dataset", "rows", "released", "reasons", "version"):
        table.add_column(col, overflow="fold")
    for s in summaries:
        reasons = ", ".join(f"{v} x {k}" for k, v in s.reasons.items()) or "-"
        table.add_row(
            printable(s.name), str(s.rows), str(s.released), printable(reasons),
            s.dataset_digest[:19],
        )  # fmt: skip
    _console().print(table)


@quarantine_app.command("show")
def quarantine_show(
    name: str,
    limit: Annotated[int, typer.Option(help="Rows in the table (JSON lists all).", min=1)] = 20,
    values: Annotated[bool, typer.Option(help="JSON: each row's values too.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The quarantined rows of a dataset and why each was quarantined.

    ``--json`` lists every row as ``{"row": id, "reasons": [...], "released": bool}``
    (ids are positions in the dataset: what `aegis attack poison --truth` records).
    """
    from aegis.data.manifest import check_dataset_name
    from aegis.data.quarantine import quarantine_records, read_quarantine
    from aegis.pipeline.layout import Layout

    check_dataset_name(name)
    ledger = _ledger()
    if STATE.json or as_json:
        _print_json(quarantine_records(ledger, name, values=values))
        return
    from aegis.data.quarantine import REASONS, ROW, released_rows, validated_version

    table = read_quarantine(Layout.of(ledger.ws), name)
    released = released_rows(ledger, name, validated_version(ledger, name))
    from rich.table import Table

    out = Table(title=f"quarantine of '{name}' ({len(table)} rows)")
    for col in ("row", "released", "reasons"):
        out.add_column(col, overflow="fold")
    for _, r in table.head(limit).iterrows():
        out.add_row(str(r[ROW]), "yes" if int(r[ROW]) in released else "no", printable(r[REASONS]))
    _console().print(out)


@quarantine_app.command("release")
def quarantine_release(
    name: str,
    reason: Annotated[str, typer.Option(help="Why these rows are fit to train on.")],
    rows: Annotated[
        str | None, typer.Option(help="Comma-separated row numbers (default: all).")
    ] = None,
    key: KeyOpt = None,
) -> None:
    """Release quarantined rows back into training (a signed, audited operator decision)."""
    from aegis.data.manifest import check_dataset_name
    from aegis.data.quarantine import release, validated_version
    from aegis.errors import UsageError

    if key is None:
        raise UsageError("releasing quarantined rows is an operator's decision: give --key")
    check_dataset_name(name)
    try:
        wanted = None if rows is None else [int(x) for x in rows.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--rows {rows!r}: expected comma-separated integers") from None
    ledger = _ledger()
    new = release(
        ledger,
        name,
        dataset_digest=validated_version(ledger, name),
        rows=wanted,
        reason=reason,
        operator_key_path=key,
    )
    _console().print(f"released {len(new)} row(s) of '{name}': {new[:20]}")
