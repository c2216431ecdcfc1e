"""The validation step: expectations, quarantine, drift gate, evidence.

Runs the dataset's Great Expectations suite on the stored (and re-verified)
version of a dataset. Rows failing row-level expectations go to quarantine;
table-level failures, a quarantine share above the limit, or a PSI above
``validate.max_psi`` against the last validated version stop the run with
nothing written to the workspace (the HTML report then goes to a temporary
directory named in the message). On success it writes the quarantine,
``result.json`` (DVC metrics) and ``report.html``, keeps the version's
profile as the next run's drift reference, and audits the result's digest.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aegis.data.drift import profile_frame, psi_against
from aegis.data.expectations import SuiteOutcome, load_suite, run_suite
from aegis.data.ingest import VerifiedDataset, verify_staged
from aegis.data.manifest import check_dataset_name
from aegis.data.quarantine import (
    EMPTY_RELEASES,
    build_quarantine,
    quarantine_path,
    releases_path,
)
from aegis.data.report import render_report
from aegis.data.sources import StagedSource
from aegis.errors import ConfigError, RefusedError, UsageError
from aegis.fileutil import atomic_write
from aegis.workspace import Workspace


@dataclass(frozen=True)
class DriftResult:
    reference: str | None  # digest of the version compared against
    max_psi: float  # the gate
    features: dict[str, float] = field(default_factory=dict)
    label: float | None = None
    passed: bool = True

    @property
    def worst(self) -> tuple[str, float] | None:
        scores = {**self.features, **({"label": self.label} if self.label is not None else {})}
        return max(scores.items(), key=lambda kv: kv[1]) if scores else None


@dataclass(frozen=True)
class ValidationResult:
    """What a validation found; saved as ``validation/<name>/result.json``."""

    name: str
    dataset: str
    suite: str
    suite_digest: str
    success: bool
    expectations: dict[str, int]
    failures: list[dict[str, Any]]
    rows: dict[str, Any]
    quarantine_reasons: dict[str, int]
    drift: DriftResult
    table_failures: list[str]
    report: str
    profile_digest: str

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode() + b"\n"


def output_paths(ws: Workspace, name: str) -> dict[str, Path]:
    base = ws.root / "validation" / name
    return {
        "result": base / "result.json",
        "report": base / "report.html",
        "quarantine": quarantine_path(ws, name),
        "profile_dir": ws.aegis_dir / "profiles" / name,
    }


def require_stage(ws: Workspace, name: str) -> None:
    """The validate stage runs only for datasets listed in ``pipeline.datasets``."""
    if name not in ws.params().pipeline.datasets:
        raise ConfigError(
            f"'{name}' is not in pipeline.datasets in params.yaml; add it so the "
            "validate stage (dvc.yaml) tracks its outputs"
        )


def load_stored(ws: Workspace, name: str):
    """Re-verifies ``data/<name>/`` against its signature and returns (frame, digest)."""
    check_dataset_name(name)
    directory = ws.data_dir / name
    if not directory.is_dir():
        raise UsageError(f"dataset '{name}' has not been ingested (no data/{name}/)")
    # verify_staged writes the supplier's public key there; a fresh clone has none
    size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    staged = StagedSource(str(directory), directory, len(list(directory.iterdir())), size)
    verified = verify_staged(ws, staged, name=name)
    return read_frame(verified), verified.digest


def read_frame(verified: VerifiedDataset):
    """The rows of a verified dataset, its files concatenated in manifest order."""
    import pandas as pd

    frames = [pd.read_parquet(verified.directory / f.path) for f in verified.manifest.files]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def reference_profile(ws: Workspace, name: str, *, exclude: str) -> tuple[str, dict] | None:
    """The profile of the last validated version of ``name`` other than ``exclude``.

    Raises:
        RefusedError: ``drift``: the profile on disk is not the one audited.
    """
    ws.verify_audit()
    for entry in reversed(ws.audit().entries()):
        if entry.action != "validate.passed" or entry.details.get("name") != name:
            continue
        digest = entry.subjects["dataset"]
        if digest == exclude:
            continue
        path = output_paths(ws, name)["profile_dir"] / f"{digest.removeprefix('sha256:')}.json"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise RefusedError("drift", f"reference profile of {digest[:19]} is missing") from None
        if "sha256:" + hashlib.sha256(raw).hexdigest() != entry.details.get("profile_digest"):
            raise RefusedError("drift", f"reference profile of {digest[:19]} was altered")
        return digest, json.loads(raw)
    return None


def _drift(ws: Workspace, name: str, digest: str, frame, params) -> DriftResult:
    ref = reference_profile(ws, name, exclude=digest)
    if ref is None:
        return DriftResult(reference=None, max_psi=params.max_psi)
    ref_digest, profile = ref
    scores = psi_against(profile, frame)
    label = scores.pop("label", None)
    worst = max([*scores.values(), label or 0.0], default=0.0)
    return DriftResult(ref_digest, params.max_psi, scores, label, worst <= params.max_psi)


@dataclass(frozen=True)
class CheckedDataset:
    """A dataset version that passed validation, with what is to be written."""

    result: ValidationResult
    quarantine: Any  # pandas.DataFrame of the quarantined rows
    profile: bytes  # the version's profile: the next version's drift reference


def check_dataset(ws: Workspace, name: str, frame, digest: str) -> CheckedDataset:
    """Runs the suite, the quarantine gate and the drift gate; writes nothing.

    Raises:
        RefusedError: ``validation`` (table-level failure or too many rows
            quarantined) or ``drift`` (PSI over the gate). The HTML report of
            the failure is written to a temporary directory named in the message.
        ConfigError: The suite is missing or invalid.
    """
    params = ws.params().validation
    suite_path = ws.root / "expectations" / f"{name}.json"
    suite = load_suite(suite_path)
    outcome = run_suite(frame, suite)
    drift = _drift(ws, name, digest, frame, params)
    quarantine = build_quarantine(frame, outcome.row_reasons)
    fraction = len(quarantine) / max(len(frame), 1)
    profile = profile_frame(
        frame, bins=params.psi_bins, categorical_max_values=params.categorical_max_values
    )
    profile_bytes = json.dumps(profile, sort_keys=True).encode()
    # schema and row count first: they explain the failures that follow from them
    table_failures = sorted(
        (o.label for o in outcome.table_failures), key=lambda f: not f.startswith("table_")
    )
    result = ValidationResult(
        name=name,
        dataset=digest,
        suite=outcome.suite,
        suite_digest="sha256:" + hashlib.sha256(suite_path.read_bytes()).hexdigest(),
        success=not table_failures and fraction <= params.max_quarantine_fraction and drift.passed,
        expectations={
            "evaluated": len(outcome.outcomes),
            "passed": outcome.passed,
            "failed": outcome.failed,
        },
        failures=[_failure(o) for o in outcome.outcomes if not o.success],
        rows={
            "total": len(frame),
            "features": frame.drop(columns=["label"], errors="ignore").shape[1],
            "quarantined": len(quarantine),
            "fraction": round(fraction, 6),
            "max_fraction": params.max_quarantine_fraction,
        },
        quarantine_reasons=_reason_counts(outcome),
        drift=drift,
        table_failures=table_failures,
        report=str(output_paths(ws, name)["report"].relative_to(ws.root)),
        profile_digest="sha256:" + hashlib.sha256(profile_bytes).hexdigest(),
    )
    if not result.success:
        _refuse(result, quarantine)
    return CheckedDataset(result, quarantine, profile_bytes)


def write_validation(ws: Workspace, checked: CheckedDataset, *, actor: str) -> ValidationResult:
    """Writes the quarantine, result, report and profile, and audits the result."""
    result = checked.result
    with ws.lock():
        _write_outputs(ws, result, checked.quarantine, checked.profile)
        _audit_validation(ws, result, actor)
    return result


def _audit_validation(ws: Workspace, result: ValidationResult, actor: str) -> None:
    ws.audit().append(
        actor=actor,
        action="validate.passed",
        pipeline_key=ws.pipeline_key(),
        subjects={
            "dataset": result.dataset,
            "validation": "sha256:" + hashlib.sha256(result.to_json()).hexdigest(),
        },
        details={
            "name": result.name,
            "suite": result.suite,
            "rows": result.rows["total"],
            "quarantined": result.rows["quarantined"],
            "reference": result.drift.reference,
            "worst_psi": result.drift.worst[1] if result.drift.worst else None,
            "profile_digest": result.profile_digest,
        },
    )


def validate_dataset(ws: Workspace, name: str, *, actor: str) -> ValidationResult:
    """Validates the stored dataset ``name`` (``aegis validate``, the DVC stage).

    Raises:
        ConfigError: ``name`` is not in ``pipeline.datasets`` (no stage tracks its outputs).
    """
    require_stage(ws, name)
    frame, digest = load_stored(ws, name)
    return write_validation(ws, check_dataset(ws, name, frame, digest), actor=actor)


def _failure(o) -> dict[str, Any]:
    return {
        "expectation": o.label,
        "kind": o.kind,
        "unexpected_count": o.unexpected_count,
        "observed": o.observed,
        "error": o.error,
    }


def _reason_counts(outcome: SuiteOutcome) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reasons in outcome.row_reasons.values():
        for reason in set(reasons):
            counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))


def _refuse(result: ValidationResult, quarantine) -> None:
    report = Path(tempfile.mkdtemp(prefix=f"aegis-validation-{result.name}-")) / "report.html"
    report.write_text(render_report(result, quarantine))
    if result.table_failures:
        shown = ", ".join(result.table_failures[:3])
        more = (
            f" (+{len(result.table_failures) - 3} more)" if len(result.table_failures) > 3 else ""
        )
        raise RefusedError(
            "validation",
            f"{len(result.table_failures)} table-level check(s) failed: {shown}{more}; "
            f"report: {report}",
        )
    rows = result.rows
    if rows["fraction"] > rows["max_fraction"]:
        raise RefusedError(
            "validation",
            f"{rows['quarantined']} of {rows['total']} rows ({rows['fraction']:.1%}) fail "
            "row-level checks, over validate.max_quarantine_fraction "
            f"({rows['max_fraction']:.1%}); report: {report}",
        )
    feature, psi = result.drift.worst or ("?", 0.0)
    over = sum(v > result.drift.max_psi for v in result.drift.features.values()) + int(
        (result.drift.label or 0) > result.drift.max_psi
    )
    raise RefusedError(
        "drift",
        f"PSI of '{feature}' is {psi:.3f} against {result.drift.reference[:19]}, over "
        f"validate.max_psi ({result.drift.max_psi}); {over} column(s) over; report: {report}",
    )


def _write_outputs(ws: Workspace, result: ValidationResult, quarantine, profile: bytes) -> None:
    paths = output_paths(ws, result.name)
    for key in ("result", "report", "quarantine"):
        paths[key].parent.mkdir(parents=True, exist_ok=True)
    paths["profile_dir"].mkdir(parents=True, exist_ok=True)
    tmp = paths["quarantine"].with_suffix(".parquet.tmp")
    quarantine.to_parquet(tmp, index=False)
    tmp.replace(paths["quarantine"])
    atomic_write(paths["report"], render_report(result, quarantine).encode())
    atomic_write(paths["result"], result.to_json())
    profile_path = paths["profile_dir"] / f"{result.dataset.removeprefix('sha256:')}.json"
    atomic_write(profile_path, profile)
    releases = releases_path(ws, result.name)
    if not releases.exists():  # the train stage depends on it, releases or not
        atomic_write(releases, json.dumps(EMPTY_RELEASES, indent=1).encode() + b"\n")


def record_validation(ws: Workspace, result: ValidationResult) -> str:
    """Commits the validate stage of ``result`` (dvc.lock, metrics, profile) to git."""
    from aegis.registry.stages import commit_stage

    paths = output_paths(ws, result.name)
    profile = paths["profile_dir"] / f"{result.dataset.removeprefix('sha256:')}.json"
    evidence = [
        str(p.relative_to(ws.root))
        for p in (paths["result"], profile, releases_path(ws, result.name))
    ]
    return commit_stage(
        ws,
        f"validate@{result.name}",
        evidence=evidence,
        message=f"validate {result.name} {result.dataset}: {result.rows['quarantined']} row(s) "
        "quarantined",
    )
