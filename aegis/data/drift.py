"""Distribution shift: a compact profile per dataset version, and PSI against it.

A profile holds, per column, the bins of the reference version and the
share of rows in each: one bin per value for columns with few distinct
values (labels, pixel intensities), quantile bins otherwise. The
population stability index of a new version against it is
``sum((p_new - p_ref) * ln(p_new / p_ref))`` over the bins, with empty bins
smoothed so a value never seen before counts instead of dividing by zero.
Rules of thumb: < 0.1 no shift, 0.1-0.25 moderate, > 0.25 large.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aegis.psi import bin_shares, psi


def profile_frame(frame, *, bins: int, categorical_max_values: int) -> dict[str, Any]:
    """Returns a JSON-serializable profile of every column of ``frame``."""
    columns: dict[str, Any] = {}
    for name in frame.columns:
        values = frame[name].dropna()
        distinct = values.unique()
        if len(distinct) <= categorical_max_values or not _is_numeric(values):
            counts = _categories(values).value_counts(normalize=True).sort_index()
            columns[name] = {
                "kind": "categorical",
                "values": [str(v) for v in counts.index],
                "shares": [float(s) for s in counts.to_numpy()],
            }
        else:
            qs = np.quantile(values.to_numpy(dtype=float), np.linspace(0, 1, bins + 1)[1:-1])
            edges = sorted({float(q) for q in qs})
            columns[name] = {
                "kind": "numeric",
                "edges": edges,
                "shares": _shares(values.to_numpy(dtype=float), edges),
            }
    return {"rows": len(frame), "columns": columns}


def _is_numeric(values) -> bool:
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    # np.issubdtype raises on pandas extension dtypes (pandas 3's default ``str``)
    return is_numeric_dtype(values.dtype) and not is_bool_dtype(values.dtype)


def _categories(values):
    """Values as category labels; numbers by value, so ``3`` (int64) and ``3.0`` are one."""
    if _is_numeric(values):
        return values.astype("float64").astype(str)
    return values.astype(str)


def _shares(values: np.ndarray, edges: list[float]) -> list[float]:
    return [float(s) for s in bin_shares(values, edges)]


def _psi(ref: list[float], new: list[float]) -> float:
    return float(psi(ref, new))


def psi_against(profile: dict[str, Any], frame) -> dict[str, float]:
    """PSI of each profiled column of ``frame`` against ``profile``.

    Columns missing from either side are skipped (the schema checks catch them).
    """
    out: dict[str, float] = {}
    for name, ref in profile["columns"].items():
        if name not in frame.columns:
            continue
        values = frame[name].dropna()
        if ref["kind"] == "categorical":
            counts = _categories(values).value_counts(normalize=True)
            known = [float(counts.get(v, 0.0)) for v in ref["values"]]
            unseen = float(counts[~counts.index.isin(ref["values"])].sum())
            out[name] = round(_psi([*ref["shares"], 0.0], [*known, unseen]), 6)
        else:
            try:
                array = values.to_numpy(dtype=float)
            except (TypeError, ValueError):
                continue  # a type change is a schema failure, reported there
            out[name] = round(_psi(ref["shares"], _shares(array, ref["edges"])), 6)
    return out
