"""Validating a dataset: expectations, quarantine, the drift gate (no workspace here).

Runs a Great Expectations suite on a dataset's rows. Rows failing row-level
expectations go to quarantine; table-level failures, a quarantine share
above the limit, or a PSI above ``validate.max_psi`` against the reference
profile stop the run (the HTML report then goes to a temporary directory
named in the message). The workspace stage that reads the stored version
and writes the evidence is :mod:`aegis.pipeline.validate`.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aegis.config import ValidateParams
from aegis.data.drift import profile_frame, psi_against
from aegis.data.expectations import SuiteOutcome, read_suite, run_suite
from aegis.data.ingest import VerifiedDataset
from aegis.data.quarantine import REASONS, ROW, build_quarantine
from aegis.data.report import render_report
from aegis.errors import ConfigError, RefusedError


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
    # the positions training leaves out: audited with this result (the parquet is for people)
    quarantined_rows: list[int] = field(default_factory=list)
    # the poisoning screens: per screen its flagged rows, scores and per-class counts
    screens: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode() + b"\n"


def read_frame(verified: VerifiedDataset):
    """The rows of a verified dataset, its files concatenated in manifest order.

    Raises:
        RefusedError: ``schema``: the files do not load as one flat table.
    """
    import pandas as pd

    try:
        frames = [pd.read_parquet(verified.directory / f.path) for f in verified.manifest.files]
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    except Exception as exc:  # pyarrow and pandas raise many types for a hostile table
        raise RefusedError(
            "schema", f"the dataset's files do not load as one table ({type(exc).__name__})"
        ) from None


def _drift(reference: tuple[str, dict] | None, frame, params) -> DriftResult:
    if reference is None:
        return DriftResult(reference=None, max_psi=params.max_psi)
    ref_digest, profile = reference
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
    rows_index: bytes | None = None  # its accepted rows: the next label diff's reference
    supplier: str | None = None


def with_screens(
    checked: CheckedDataset, frame, screen_reasons: dict[int, list[str]], summary: dict[str, Any]
) -> CheckedDataset:
    """``checked`` with the screens' flagged rows added to its quarantine and result."""
    from dataclasses import replace

    result = checked.result
    reasons: dict[int, list[str]] = {}
    for _, row in checked.quarantine.iterrows():
        reasons[int(row[ROW])] = str(row[REASONS]).split("; ")
    for row, why in screen_reasons.items():
        reasons.setdefault(row, []).extend(why)
    counts = dict(result.quarantine_reasons)
    for why in screen_reasons.values():
        for reason in set(why):
            counts[reason] = counts.get(reason, 0) + 1
    rows = {
        **result.rows,
        "quarantined": len(reasons),
        "failed_expectations": len(checked.quarantine),
        "screened": len(screen_reasons),
    }
    merged = replace(
        result,
        rows=rows,
        quarantine_reasons=dict(sorted(counts.items())),
        quarantined_rows=sorted(reasons),
        screens=summary,
    )
    return replace(checked, result=merged, quarantine=build_quarantine(frame, reasons))


def check_dataset(
    frame,
    *,
    name: str,
    digest: str,
    suite_path: Path,
    params: ValidateParams,
    reference: tuple[str, dict] | None,
    report: str,
) -> CheckedDataset:
    """Runs the suite, the quarantine gate and the drift gate on ``frame``; writes nothing.

    Args:
        frame: The dataset's rows.
        name: The dataset name.
        digest: The dataset digest (its signed manifest's).
        suite_path: ``expectations/<name>.json``.
        params: The ``validate`` section.
        reference: The last validated version's (digest, profile), or None.
        report: Where the report will be written (workspace-relative, for the result).

    Raises:
        RefusedError: ``validation`` (table-level failure or too many rows
            quarantined), ``drift`` (PSI over the gate) or ``schema`` (the table
            cannot be checked). The HTML report of a failure is written to a
            temporary directory named in the message.
        ConfigError: The suite is missing or invalid.
    """
    suite, suite_digest = read_suite(suite_path)
    try:
        outcome = run_suite(frame, suite)
        drift = _drift(reference, frame, params)
        quarantine = build_quarantine(frame, outcome.row_reasons)
        profile = profile_frame(
            frame, bins=params.psi_bins, categorical_max_values=params.categorical_max_values
        )
    except (ConfigError, RefusedError):
        raise
    except Exception as exc:  # a hostile but signed table (GX, pandas, numpy errors)
        raise RefusedError(
            "schema", f"'{name}' cannot be validated as a table ({type(exc).__name__})"
        ) from None
    fraction = len(quarantine) / max(len(frame), 1)
    profile_bytes = json.dumps(profile, sort_keys=True).encode()
    # schema and row count first: they explain the failures that follow from them
    table_failures = sorted(
        (o.label for o in outcome.table_failures), key=lambda f: not f.startswith("table_")
    )
    result = ValidationResult(
        name=name,
        dataset=digest,
        suite=outcome.suite,
        suite_digest=suite_digest,
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
        report=report,
        profile_digest="sha256:" + hashlib.sha256(profile_bytes).hexdigest(),
        quarantined_rows=sorted(int(r) for r in outcome.row_reasons),
    )
    if not result.success:
        _refuse(result, quarantine)
    return CheckedDataset(result, quarantine, profile_bytes)


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
