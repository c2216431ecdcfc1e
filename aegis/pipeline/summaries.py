"""What each run proved, as tables and markdown for people (the Prefect UI's artifacts).

Pure functions from the core's results to rows and text; ``tasks/artifacts.py``
publishes them. Every figure comes from the result objects the run returned
(themselves from audited, signed evidence), never re-measured here.
"""

from __future__ import annotations

import re
from typing import Any

from aegis.approval import GateResult
from aegis.data.ingest import IngestResult
from aegis.data.validate import ValidationResult
from aegis.pipeline.evaluate import EvaluatedModel
from aegis.pipeline.train import TrainedModel
from aegis.registry.release import Release
from aegis.triggers.record import Trigger

Rows = list[dict[str, Any]]


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) from ``parts``."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def dataset_rows(result: IngestResult) -> Rows:
    """Digest, supplier, rows and DVC version of an accepted dataset."""
    return [
        {"field": "dataset", "value": result.name},
        {"field": "manifest digest", "value": result.digest},
        {"field": "created", "value": result.created},
        {"field": "supplier", "value": f"{result.supplier} ({result.supplier_owner})"},
        {"field": "rows / files / bytes",
         "value": f"{result.rows} / {result.files} / {result.bytes}"},
        {"field": "DVC version", "value": f"{result.dvc_md5} (commit {result.commit[:12]})"},
        {"field": "audit entry", "value": str(result.audit_seq)},
    ]  # fmt: skip


def validation_rows(result: ValidationResult) -> Rows:
    """Suite result, quarantined rows and PSI per feature (worst first)."""
    rows: Rows = [
        {"check": "suite", "value": result.suite, "result": "pass" if result.success else "FAIL"},
        {"check": "quarantined rows", "value": str(len(result.quarantined_rows)),
         "result": ", ".join(f"{k}: {v}" for k, v in sorted(result.quarantine_reasons.items()))
         or "-"},
    ]  # fmt: skip
    drift = result.drift
    scores = {**drift.features, **({"label": drift.label} if drift.label is not None else {})}
    for feature, psi in sorted(scores.items(), key=lambda kv: -kv[1])[:10]:
        verdict = "pass" if psi <= drift.max_psi else "FAIL"
        rows.append({"check": f"PSI {feature}", "value": _fmt(psi), "result": verdict})
    if drift.reference is None:
        rows.append({"check": "PSI", "value": "-", "result": "first version (no reference)"})
    return rows


def model_rows(trained: TrainedModel | None, evaluated: EvaluatedModel) -> Rows:
    """Clean and worst-case robust accuracy, ε spent, MIA AUC and flags."""
    m = evaluated.metrics
    robust, mia = m.get("robust") or {}, m.get("mia") or {}
    rows: Rows = [
        {"metric": "clean accuracy", "value": _fmt(m.get("clean_acc"))},
        {"metric": f"robust accuracy, worst case (ε {_fmt(robust.get('eps'))})",
         "value": _fmt(robust.get("worst_case"))},
        {"metric": "robust accuracy, PGD", "value": _fmt(robust.get("pgd"))},
        {"metric": "DP ε spent", "value": _fmt(m.get("epsilon_spent"), 2)},
        {"metric": "membership-inference AUC", "value": _fmt(mia.get("auc"))},
        {"metric": "adversarial-input detector, clean test inputs flagged",
         "value": _fmt((m.get("detector") or {}).get("test_fpr"))},
        {"metric": "flags", "value": ", ".join(m.get("flags") or []) or "none"},
        {"metric": "model digest", "value": evaluated.model_digest},
    ]  # fmt: skip
    if trained is not None:
        rows.append({"metric": "defense / privacy", "value": f"{trained.defense} / "
                     f"{trained.privacy}"})  # fmt: skip
    return rows


def gate_rows(gates: list[GateResult]) -> Rows:
    """The promotion gates: measured, threshold, verdict."""
    return [
        {"gate": g.gate, "measured": g.measured, "threshold": g.threshold,
         "result": "pass" if g.passed else "FAIL"}
        for g in gates
    ]  # fmt: skip


def release_markdown(release: Release, trigger: Trigger, reports: dict[str, str]) -> str:
    """The run's summary: release tag, digests, trigger, links to the HTML reports."""
    links = "\n".join(f"- [{what}]({where})" for what, where in reports.items())
    return (
        f"# Released `{release.tag}`\n\n"
        f"| | |\n|---|---|\n"
        f"| model digest | `{release.model_digest}` |\n"
        f"| evidence digest | `{release.evidence_digest}` |\n"
        f"| dataset digest | `{release.dataset_digest}` |\n"
        f"| commit | `{release.commit[:12]}` |\n"
        f"| trigger | {trigger.describe()} |\n\n"
        f"Check it with `aegis verify {release.tag}`.\n\n"
        f"## Reports\n\n{links or '-'}\n"
    )
