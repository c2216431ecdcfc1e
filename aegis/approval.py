"""Promotion policy: the gates a release must pass, and signed approval requests/approvals.

Gates compare a release's signed evidence (``metrics.json``, ``validation.json``)
with the ``promote`` section of ``params.yaml`` and the current ``prod``.

Approvals live in ``.aegis/approvals/<model>/<version>/``: ``request.json`` (signed
by the operator who asked for the promotion) and ``approval-<keyid>.json`` (one per
approver key). Each file is ``{"body": {...}, "signature": b64, "key_id": hex}``
signed over the canonical JSON of its body. The files are the source of truth:
Prefect only waits for them. An approval is bound to the candidate (model digest),
the evidence digest and the exact request, so it cannot be replayed onto another
version, another build of the same version, or a renewed request. The file store
(reading, writing, verifying) is in :mod:`aegis.registry.approvals_store`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from aegis.config import PromoteParams
from aegis.errors import RefusedError


@dataclass(frozen=True)
class GateResult:
    """One policy gate: what was measured, the threshold, and the verdict."""

    gate: str
    measured: str
    threshold: str
    passed: bool


class GateFailure(RefusedError):
    """One or more gates failed; ``rows`` holds every gate (for the table)."""

    def __init__(self, rows: list[GateResult]) -> None:
        failed = [r.gate for r in rows if not r.passed]
        super().__init__("gates", f"{len(failed)} gate(s) failed: {', '.join(failed)}")
        self.rows = rows

    def __reduce__(self):  # picklable across process boundaries (Prefect)
        return (type(self), (self.rows,))


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not measured"
    return f"{value:.4f}"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(float(value)) else float(value)


def _at_least(gate: str, value: Any, threshold: float) -> GateResult:
    v = _number(value)
    return GateResult(gate, _fmt(v), f">= {threshold:g}", v is not None and v >= threshold)


def _at_most(gate: str, value: Any, threshold: float) -> GateResult:
    v = _number(value)
    return GateResult(gate, _fmt(v), f"<= {threshold:g}", v is not None and v <= threshold)


def robust_accuracy(metrics: dict[str, Any]) -> Any:
    """The headline (per-sample worst-case) robust accuracy of ``metrics.json``."""
    return (metrics.get("robust") or {}).get("worst_case")


def _trusted_gates(
    metrics: dict[str, Any], params: PromoteParams, trusted_set: str | None
) -> list[GateResult]:
    """The thresholds again on the trusted set, when one is configured or was measured."""
    trusted = metrics.get("trusted") if isinstance(metrics.get("trusted"), dict) else None
    if trusted_set is None and trusted is None:
        return []
    trusted = trusted or {}
    rows = []
    if trusted_set is not None:
        measured = trusted.get("set")
        shown = str(measured)[:40] + "..." if measured else "not measured"
        rows.append(GateResult("trusted_set", shown, trusted_set[:40] + "...",
                               measured == trusted_set))  # fmt: skip
    rows.append(_at_least("trusted_clean_acc", trusted.get("clean_acc"), params.min_clean_acc))
    rows.append(_at_least("trusted_robust_acc", trusted.get("robust_acc"), params.min_robust_acc))
    return rows


def evaluate_gates(
    *,
    metrics: dict[str, Any],
    validation: dict[str, Any],
    params: PromoteParams,
    prod_metrics: dict[str, Any] | None = None,
    dp: bool | None = None,
    trusted_set: str | None = None,
) -> list[GateResult]:
    """Runs every promotion gate; never raises (see :func:`require_gates`).

    A value that was not measured fails its gate: a gate is never passed by default.

    Args:
        metrics: The candidate's ``metrics.json``.
        validation: The candidate's ``validation.json`` (the validation result).
        params: The ``promote`` section of ``params.yaml``.
        prod_metrics: The current prod's ``metrics.json``, or None without a prod.
        dp: Whether the candidate was trained with DP; None infers it from
            ``metrics["epsilon_spent"]``.
        trusted_set: ``evaluate.trusted_set``: the candidate must have been measured on
            it, and meet the clean and robust thresholds there too.

    Returns:
        One row per gate, in a fixed order.
    """
    rows = [
        _at_least("min_clean_acc", metrics.get("clean_acc"), params.min_clean_acc),
        _at_least("min_robust_acc", robust_accuracy(metrics), params.min_robust_acc),
        *_trusted_gates(metrics, params, trusted_set),
    ]
    if dp is None:
        dp = metrics.get("epsilon_spent") is not None
    if dp:
        rows.append(_at_most("max_epsilon", metrics.get("epsilon_spent"), params.max_epsilon))
    else:
        rows.append(GateResult("max_epsilon", "DP off", "only with DP", True))
    rows.append(_at_most("max_mia_auc", (metrics.get("mia") or {}).get("auc"), params.max_mia_auc))
    ok = validation.get("success") is True
    rows.append(GateResult("validation", "passed" if ok else "failed", "passed", ok))
    flags = metrics.get("flags")
    clean = isinstance(flags, list) and not flags
    shown = "none" if clean else (", ".join(map(str, flags)) if flags else "missing")
    rows.append(GateResult("evaluation_flags", shown, "none", clean))
    if prod_metrics is None:
        rows.append(GateResult("max_regression", "no prod", f"<= {params.max_regression:g}", True))
        return rows
    for gate, ours, theirs in (
        ("max_regression_clean", metrics.get("clean_acc"), prod_metrics.get("clean_acc")),
        ("max_regression_robust", robust_accuracy(metrics), robust_accuracy(prod_metrics)),
    ):
        a, b = _number(ours), _number(theirs)
        drop = None if a is None or b is None else round(b - a, 6)
        rows.append(_at_most(gate, drop, params.max_regression))
    return rows


def require_gates(rows: list[GateResult]) -> list[GateResult]:
    """Returns ``rows`` if every gate passed.

    Raises:
        GateFailure: At least one gate failed (exit 1; carries every row).
    """
    if not all(r.passed for r in rows):
        raise GateFailure(rows)
    return rows
