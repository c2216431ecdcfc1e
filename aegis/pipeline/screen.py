"""The poisoning screens in a workspace: which run, on which rows, against which reference.

Runs after the expectation suite, on the rows it did not quarantine, as
``screen.enabled`` says: ``label-changed`` against the last validated version's
row index, ``label-issue`` and ``backdoor`` on the rows alone
(:mod:`aegis.screens`). Their flagged rows join the quarantine with the
screen's name as the reason; their share counts against
``screen.max_flagged_fraction`` (not ``validate.max_quarantine_fraction``).
``label-changed`` runs first; when it alone is over the limit the model-based
screens are not run (the version is refused either way). Over the limit,
the run stops (:class:`ScreenRefusal`, exit 1) with what was flagged,
nothing is stored, and the refusal is audited (``screen.refused``) so the
supplier's reputation counts it.

The **row index** of a version (``.aegis/profiles/<name>/<digest>.rows.parquet``)
holds the rows it accepted (features and label, quarantine left out); its
digest is audited with the validation. It is the next version's label-diff
reference and what a trusted set (``evaluate.trusted_set``) is read from.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aegis.config import Params
from aegis.errors import RefusedError, UnsafeFileError
from aegis.fileutil import read_regular
from aegis.ledger import Action, Ledger
from aegis.pipeline.layout import Layout
from aegis.screens.result import ScreenResult
from aegis.screens.table import LABEL, feature_columns

INDEX_LIMIT = 1024**3


class ScreenRefusal(RefusedError):
    """The screens flagged more rows than ``screen.max_flagged_fraction`` allows.

    Attributes:
        report: What was flagged (``--json`` prints it): per screen, the rows and counts.
    """

    default_check = "screen"

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__("screen", message)
        self.report = report or {}

    def __reduce__(self):
        return (type(self), (self.detail, self.report))


@dataclass(frozen=True)
class ScreenOutcome:
    """What the screens found in one version."""

    row_reasons: dict[int, list[str]]  # positions in the whole table
    summary: dict[str, Any]  # result.json's "screens"
    flagged: int
    results: dict[str, ScreenResult] = field(default_factory=dict)


def _numeric(frame, features: list[str]) -> bool:
    from pandas.api.types import is_integer_dtype, is_numeric_dtype

    return (
        LABEL in frame.columns
        and is_integer_dtype(frame[LABEL])
        and bool(features)
        and all(is_numeric_dtype(frame[c]) for c in features)
        and not frame[[*features, LABEL]].isna().to_numpy().any()
    )


def row_index_bytes(frame, accepted: np.ndarray) -> bytes:
    """The row index of a version: its accepted rows as Parquet."""
    out = io.BytesIO()
    frame.iloc[accepted].reset_index(drop=True).to_parquet(out, index=False)
    return out.getvalue()


def read_row_index(ledger: Ledger, name: str, entry) -> Any | None:
    """The row index a ``validate.passed`` entry audited, or None if it recorded none.

    Raises:
        RefusedError: ``screen``: the file is missing or not the one audited.
    """
    import pandas as pd

    expected = entry.details.get("rows_digest")
    if not expected:
        return None
    digest = entry.subjects["dataset"]
    path = row_index_path(Layout.of(ledger.ws), name, digest)
    try:
        raw = read_regular(path, limit=INDEX_LIMIT, what=f"row index of {digest[:19]}")
    except FileNotFoundError:
        raise RefusedError("screen", f"the row index of {digest[:19]} is missing") from None
    except UnsafeFileError as exc:
        raise RefusedError("screen", exc.detail) from None
    if "sha256:" + hashlib.sha256(raw).hexdigest() != expected:
        raise RefusedError("screen", f"the row index of {digest[:19]} was altered")
    return pd.read_parquet(io.BytesIO(raw))


def row_index_path(layout: Layout, name: str, digest: str) -> Path:
    return layout.profiles(name) / f"{digest.removeprefix('sha256:')}.rows.parquet"


def _label_diff(ledger: Ledger, name: str, digest: str, part, features, params: Params):
    from aegis.screens.label_diff import label_changes

    entry = ledger.last_validation(name, exclude=digest)
    if entry is None:
        return None, "no earlier validated version"
    reference = read_row_index(ledger, name, entry)
    if reference is None:
        return None, f"{entry.subjects['dataset'][:19]} has no row index (an older Aegis)"
    if [c for c in reference.columns if c != LABEL] != features:
        return None, f"the columns differ from {entry.subjects['dataset'][:19]}'s"
    settings = params.screen.label_diff
    result = label_changes(
        reference[features].to_numpy(dtype=np.float64),
        reference[LABEL].to_numpy(),
        part[features].to_numpy(dtype=np.float64),
        part[LABEL].to_numpy(),
        max_changed_features=settings.max_changed_features,
        tolerance=settings.tolerance,
        neighbours=settings.neighbours,
    )
    result.details["reference"] = entry.subjects["dataset"]
    return result, None


def _run_one(screen: str, ledger, name, digest, part, features, params: Params):
    seed = params.train.seed
    if screen == "label-changed":
        return _label_diff(ledger, name, digest, part, features, params)
    if screen == "label-issue":
        from aegis.screens.label_issues import label_issue_screen

        settings = params.screen.label_issue.model_dump()
        return label_issue_screen(part, seed=seed, **settings), None
    from aegis.screens.backdoor import backdoor_screen

    settings = params.screen.backdoor.model_dump()
    # the preliminary model has the pipeline's architecture and thread count
    result = backdoor_screen(
        part, seed=seed, model=params.train.model, threads=params.train.threads, **settings
    )
    return result, None


def _summary(result: ScreenResult, positions: np.ndarray, seconds: float) -> dict[str, Any]:
    rows = positions[result.flagged]
    return {
        "flagged": len(rows),
        "rows": [int(r) for r in rows],
        "scores": [round(float(s), 6) for s in result.scores[result.flagged]],
        "threshold": result.threshold,
        "per_class": {str(k): v for k, v in result.per_class.items()},
        "details": result.details,
        "seconds": round(seconds, 3),
    }


def _fraction(flagged: int, rows: int) -> float:
    return round(flagged / max(rows, 1), 6)


def _over(flagged: int, rows: int, params: Params) -> bool:
    """Over ``screen.max_flagged_fraction``, exactly as :func:`check_limit` decides it."""
    return _fraction(flagged, rows) > params.screen.max_flagged_fraction


def run_screens(
    ledger: Ledger, frame, *, name: str, digest: str, excluded: set[int], params: Params
) -> ScreenOutcome:
    """Runs the enabled screens on the rows of ``frame`` not in ``excluded``; writes nothing.

    Args:
        ledger: The workspace's ledger (for the label diff's reference).
        frame: The whole version's rows.
        name: Dataset name.
        digest: The version's manifest digest.
        excluded: Rows the expectation suite quarantined (not screened).
        params: The workspace's parameters.

    Raises:
        RefusedError: ``screen``: the reference row index is missing or altered.
    """
    features = feature_columns(frame)
    keep = np.array([i for i in range(len(frame)) if i not in excluded], dtype=np.int64)
    part = frame.iloc[keep].reset_index(drop=True)
    summary: dict[str, Any] = {"enabled": list(params.screen.enabled), "skipped": {}}
    reasons: dict[int, list[str]] = {}
    results: dict[str, ScreenResult] = {}
    if not params.screen.enabled:
        return ScreenOutcome(reasons, summary, 0)
    if not _numeric(part, features):
        summary["skipped"] = dict.fromkeys(params.screen.enabled, "features are not all numeric")
        return ScreenOutcome(reasons, summary, 0)

    def run(screen: str):
        started = time.perf_counter()
        result, skipped = _run_one(screen, ledger, name, digest, part, features, params)
        return result, skipped, time.perf_counter() - started

    # the exact label diff first: a version it alone puts over the limit is refused
    # whatever the model-based screens would add, so they are not run (seconds, not a verdict)
    outcomes = {}
    if "label-changed" in params.screen.enabled:
        outcomes["label-changed"] = run("label-changed")
    rest = [s for s in params.screen.enabled if s not in outcomes]
    changed = outcomes.get("label-changed", (None,))[0]
    if changed is not None and _over(len(changed.flagged), len(frame), params):
        summary["skipped"].update(dict.fromkeys(rest, "label-changed alone is over the limit"))
        rest = []
    # One after the other: on two threads (tried) the screens were 1.5x faster alone but
    # 2-4x slower inside a flow run, where torch's OpenMP pool and the GIL contend.
    outcomes.update((s, run(s)) for s in rest)
    # summarised in the configured order, as before the label diff was moved first
    for screen in (s for s in params.screen.enabled if s in outcomes):
        result, skipped, seconds = outcomes[screen]
        if result is None:
            summary["skipped"][screen] = skipped
            continue
        results[screen] = result
        summary[screen] = _summary(result, keep, seconds)
        for row in keep[result.flagged]:
            reasons.setdefault(int(row), []).append(screen)
    summary["flagged"] = len(reasons)
    summary["fraction"] = _fraction(len(reasons), len(frame))
    summary["max_fraction"] = params.screen.max_flagged_fraction
    return ScreenOutcome(reasons, summary, len(reasons), results)


def check_limit(
    ledger: Ledger, outcome: ScreenOutcome, *, name: str, digest: str, rows: int, supplier: str
) -> None:
    """Stops a version whose screens flagged too much; audits the refusal.

    Raises:
        ScreenRefusal: Over ``screen.max_flagged_fraction``.
    """
    summary = outcome.summary
    if not outcome.flagged or summary["fraction"] <= summary["max_fraction"]:
        return
    per_screen = {s: summary[s]["flagged"] for s in summary["enabled"] if s in summary}
    report_dir = Path(tempfile.mkdtemp(prefix=f"aegis-screens-{name}-"))
    report = {
        "name": name, "dataset": digest, "rows": rows, "flagged": outcome.flagged,
        "fraction": summary["fraction"], "max_fraction": summary["max_fraction"],
        "screens": {s: {"flagged": summary[s]["flagged"], "rows": summary[s]["rows"]}
                    for s in per_screen},
        "row_reasons": {str(k): v for k, v in sorted(outcome.row_reasons.items())},
    }  # fmt: skip
    import json

    (report_dir / "screens.json").write_text(json.dumps(report, indent=1) + "\n")
    with ledger.locked():
        ledger.append(
            Action.SCREEN_REFUSED,
            actor=ledger.pipeline_entry().key_id,
            subjects={"dataset": digest},
            details={"name": name, "supplier": supplier, "rows": rows,
                     "flagged": outcome.flagged, "screens": per_screen},
        )  # fmt: skip
    worst = max(per_screen, key=per_screen.get)
    shown = ", ".join(f"{s} {n}" for s, n in per_screen.items())
    raise ScreenRefusal(
        f"{worst}: the screens flagged {outcome.flagged} of {rows} rows "
        f"({summary['fraction']:.1%}; {shown}), over screen.max_flagged_fraction "
        f"({summary['max_fraction']:.0%}); nothing stored; flagged rows: "
        f"{report_dir / 'screens.json'}",
        report,
    )
