"""Prefect artifacts: what each flow run proved, in the UI (tables, markdown, report links).

The content comes from :mod:`aegis.pipeline.summaries`; this module only
publishes it. Keys are per dataset or model, so the UI shows each key's
history across runs. Publishing is best effort outside a flow run (nothing
to attach to); inside one, a failure is the server's and fails loudly.
"""

from __future__ import annotations

from pathlib import Path

from aegis.ledger import Ledger
from aegis.pipeline import summaries as s
from aegis.pipeline.layout import Layout
from aegis.pipeline.retrain import AlreadyCurrent, RetrainResult


def _in_run() -> bool:
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None


def _table(key: str, rows: s.Rows, description: str) -> None:
    from prefect.artifacts import create_table_artifact

    create_table_artifact(table=rows, key=key, description=description)


def _markdown(key: str, text: str, description: str) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown=text, key=key, description=description)


def _report_uri(ledger: Ledger, rel: str) -> str:
    path = Path(rel) if Path(rel).is_absolute() else ledger.ws.root / rel
    return path.resolve().as_uri()


def publish_run(ledger: Ledger, result: RetrainResult | AlreadyCurrent) -> None:
    """Dataset, validation and model tables and the release summary of one retrain run."""
    if not _in_run():
        return
    if isinstance(result, AlreadyCurrent):
        _markdown(s.artifact_key(result.name, "summary"), f"# {result.message()}\n\n"
                  f"Trigger: {result.trigger.describe()}\n", "retrain: nothing to do")  # fmt: skip
        return
    name = result.train.name
    if result.ingest is not None:
        _table(s.artifact_key(name, "dataset"), s.dataset_rows(result.ingest),
               f"accepted dataset '{name}'")  # fmt: skip
    if result.validate is not None:  # an incident's retrain trains accepted data again
        _table(s.artifact_key(name, "validation"), s.validation_rows(result.validate),
               f"validation of '{name}'")  # fmt: skip
    model = result.release.model_name
    _table(s.artifact_key(model, "metrics"), s.model_rows(result.train, result.evaluate),
           f"evaluation of {result.release.tag}")  # fmt: skip
    layout = Layout.of(ledger.ws)
    reports = {
        "validation report": _report_uri(ledger, layout.rel(layout.validation_report(name))),
        "evaluation report": _report_uri(ledger, result.evaluate.report_path),
    }
    _markdown(s.artifact_key(name, "summary"),
              s.release_markdown(result.release, result.trigger, reports),
              f"released {result.release.tag}")  # fmt: skip


def publish_nothing_new(ledger: Ledger) -> None:
    """A scheduled run that found no new delivery."""
    if _in_run():
        _markdown("retrain-summary", "# already current\n\nNo new signed delivery in "
                  f"`triggers.sources` ({len(ledger.ws.params().triggers.sources)} source(s)).\n",
                  "retrain: nothing to do")  # fmt: skip


def publish_gates(model: str, version: str, gates, status: str) -> None:
    """The promotion gates of a promote run, and its outcome."""
    if not _in_run():
        return
    if gates:
        _table(s.artifact_key(model, "gates"), s.gate_rows(gates),
               f"promotion gates of {model}@{version}")  # fmt: skip
    _markdown(s.artifact_key(model, "promotion"), f"# {model}@{version}: {status}\n",
              "promotion outcome")  # fmt: skip


def publish_rollback(outcome) -> None:
    """What a rollback moved, and why."""
    if not _in_run():
        return
    _markdown(
        s.artifact_key(outcome.model, "rollback"),
        f"# Rolled back `{outcome.model}`: {outcome.from_version} -> {outcome.to_version}\n\n"
        f"| | |\n|---|---|\n| reason | {outcome.reason} |\n"
        f"| prod model digest now | `{outcome.to_model_digest}` |\n"
        f"| {outcome.from_version} | marked bad |\n| audit entry | {outcome.audit_seq} |\n",
        "rollback",
    )


def publish_watch(rows: s.Rows) -> None:
    """What a watch run saw and emitted."""
    if _in_run() and rows:
        _table("aegis-watch", rows, "deliveries the watch reported")
