"""Great Expectations validation of 1M rows x 20 columns with row-level results, against pandas.

What is measured
    A synthetic frame (seeded numpy): ``--rows`` rows (default 1,000,000) of
    19 float64 features ``feature_00..feature_18`` drawn uniformly from
    [0, 16] (like the digits pixels) and an int64 ``label`` in 0..9. A small
    fraction of cells (``--bad-fraction`` per column and kind, default 0.05%)
    is spoiled so that row-level results are not empty: nulls and out-of-range
    values (below 0 or above 16) in every feature, labels outside the set
    (-1, 10); and ``--duplicates`` rows (default 100) are copied over other
    rows for the compound-uniqueness extra. The suite has the shape of
    ``expectations/digits.json``: ordered column list, row count between,
    then per column a type list, not-null and between (label: in-set
    instead of between) -- 62 expectations, 40 of them row-level.

    (a) GX: ``aegis.data.expectations.run_suite(frame, suite)`` end to end
        (ephemeral context, pandas datasource, ``COMPLETE`` result format,
        row-level failures from ``unexpected_index_list``), then
        ``aegis.data.quarantine.build_quarantine``; the time of each and
        their sum, which is the number held against the goal.
    (b) pandas: the very same expectations evaluated from the same suite
        JSON with pandas/numpy column operations (GX's semantics: nulls are
        skipped by between and in-set, bounds inclusive, type list checks
        the column dtype), producing the same outcomes (success, unexpected
        count) and the same ``row_reasons`` mapping, then the same
        ``build_quarantine``.
    Both are cross-checked: which expectations failed, unexpected counts,
    the failing row set of every row-level expectation, the per-row reasons
    and the quarantine frames must all be equal (reported, not asserted).

    (a) and (b) alternate, ``--repeats`` times each, after one untimed
    warm-up of each; best, median and worst are reported, plus CPU seconds
    (user, system) and minor page faults of each run. GX's run-to-run spread
    is almost all system time spent faulting in fresh memory for its row
    copies, which fades once the process has grown its heap, so the first
    full-size run and the median are reported next to the best. Measured
    separately and excluded from (a): ``import great_expectations`` and the
    first ``run_suite`` in the process (first ephemeral context, on 1,000
    rows). If one GX run takes more than ``--gx-budget`` seconds it is run
    only once (still at the full row count), and the result says so.

    Extra line, not in (a) or (b): ``expect_compound_columns_to_be_unique``
    over the 19 features (digits.json has it), run alone through
    ``run_suite`` and as ``DataFrame.duplicated(keep=False)``, same repeats,
    row sets compared. It is left out of the main suite because hashing
    whole rows is costly even in pandas (tens of times the column checks) and
    would swamp the comparison the issue asks for.

    Where GX's time goes (``--no-profile`` skips both): one more GX run
    under cProfile, reporting the time inside pandas DataFrame boolean-mask
    indexing, split by the GX function that asked for it, batch hashing and
    the rest (cProfile inflates the total; read the shares); and one more
    run without cProfile in which every DataFrame boolean-mask selection is
    counted and timed, split into whole-frame copies (>= 99% of the rows
    kept) and small ones.

Why
    Issue target: "GX validation of 1M rows x 20 columns with row-level
    results: seconds and rows/s in the same run as a plain pandas pass over
    the same checks (stretch goal <= 3 s on 2 cores). Report a miss
    honestly; do not replace Great Expectations to meet it." The pandas pass
    says how far GX is from the cost of the checks themselves. Goal: (a) best
    <= 3.0 s at 1,000,000 rows (``met`` is null for another row count).

Run: ``.venv/bin/python benchmarks/bench_validate.py [--rows 1000000] [--repeats 5]``.
Writes ``benchmarks/results/bench_validate.json``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from _common import ROOT, quiet_environment, summary, write_result

quiet_environment()

GOAL_SECONDS = 3.0
GOAL_ROWS = 1_000_000
FEATURES = 19
LOW, HIGH = 0, 16  # feature range, as the digits pixels
LABELS = list(range(10))
WARMUP_ROWS = 1_000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=GOAL_ROWS, help="rows (default 1,000,000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of (a) and (b)")
    parser.add_argument(
        "--bad-fraction",
        type=float,
        default=0.0005,
        help="fraction of cells spoiled per column and kind (default 0.0005)",
    )
    parser.add_argument(
        "--duplicates", type=int, default=100, help="rows copied over others (default 100)"
    )
    parser.add_argument(
        "--gx-budget",
        type=float,
        default=60.0,
        help="if one GX run takes longer (s), run GX only once (default 60)",
    )
    parser.add_argument(
        "--no-compound", action="store_true", help="skip the compound-uniqueness extra"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile run of GX")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tag", default="", help="suffix of the result file (bench_validate-TAG.json)"
    )
    return parser.parse_args()


# -- data and suite -------------------------------------------------------------------------------


def feature_names() -> list[str]:
    return [f"feature_{i:02d}" for i in range(FEATURES)]


def make_frame(rows: int, *, bad_fraction: float, duplicates: int, seed: int):
    """The synthetic frame and what was injected into it."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    k = max(1, int(rows * bad_fraction))
    data: dict[str, Any] = {}
    for name in feature_names():
        col = rng.uniform(LOW, HIGH, rows)
        out = rng.choice(rows, k, replace=False)
        col[out] = np.where(
            rng.random(k) < 0.5, rng.uniform(LOW - 10, LOW - 0.5, k), rng.uniform(HIGH + 0.5, 30, k)
        )
        col[rng.choice(rows, k, replace=False)] = np.nan  # may land on an out-of-range cell
        data[name] = col
    label = rng.integers(0, len(LABELS), rows, dtype=np.int64)
    label[rng.choice(rows, k, replace=False)] = rng.choice([-1, len(LABELS)], k)
    data["label"] = label
    frame = pd.DataFrame(data)
    if duplicates:  # last, so a copied row keeps its twin
        src, dst = np.split(rng.choice(rows, 2 * duplicates, replace=False), 2)
        frame.iloc[dst] = frame.iloc[src].to_numpy()
    return frame, {"per_column_and_kind": k, "duplicated_pairs": duplicates}


def make_suite(rows: int) -> dict[str, Any]:
    """Same JSON shape as expectations/digits.json, without the compound uniqueness."""
    features = feature_names()
    expectations: list[dict[str, Any]] = [
        {
            "type": "expect_table_columns_to_match_ordered_list",
            "kwargs": {"column_list": [*features, "label"]},
            "meta": {"notes": "schema: exact columns in order"},
        },
        {
            "type": "expect_table_row_count_to_be_between",
            "kwargs": {"min_value": 500, "max_value": max(rows, 1_000_000)},
            "meta": {"notes": "row count bounds"},
        },
    ]
    for name in [*features, "label"]:
        types = ["int64"] if name == "label" else ["float64", "float32", "int64"]
        expectations += [
            {
                "type": "expect_column_values_to_be_in_type_list",
                "kwargs": {"column": name, "type_list": types},
            },
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": name}},
        ]
        if name != "label":
            expectations.append(
                {
                    "type": "expect_column_values_to_be_between",
                    "kwargs": {"column": name, "min_value": LOW, "max_value": HIGH},
                }
            )
    expectations.append(
        {
            "type": "expect_column_values_to_be_in_set",
            "kwargs": {"column": "label", "value_set": LABELS},
        }
    )
    return {
        "name": "bench_validate",
        "meta": {"notes": "bench_validate: digits-shaped suite for the synthetic frame"},
        "expectations": expectations,
    }


def compound_suite() -> dict[str, Any]:
    return {
        "name": "bench_validate_compound",
        "expectations": [
            {
                "type": "expect_compound_columns_to_be_unique",
                "kwargs": {"column_list": feature_names()},
            }
        ],
    }


# -- (b) the same checks in pandas ----------------------------------------------------------------


def pandas_suite(frame, suite: dict[str, Any]):
    """Evaluates ``suite`` like run_suite does, without GX; returns a SuiteOutcome."""
    import numpy as np
    import pandas as pd

    from aegis.data.expectations import ROW_LEVEL, ExpectationOutcome, SuiteOutcome

    outcomes: list[ExpectationOutcome] = []
    reasons: dict[int, list[str]] = {}
    nulls: dict[str, Any] = {}

    def isnull(column: str):
        if column not in nulls:
            nulls[column] = pd.isna(frame[column]).to_numpy()
        return nulls[column]

    for exp in suite["expectations"]:
        kind, kw = exp["type"], exp["kwargs"]
        columns = kw.get("column_list") or []
        column = kw.get("column") or (  # named as run_suite names it
            "+".join(columns)
            if 0 < len(columns) <= 3
            else f"{len(columns)} columns"
            if columns
            else None
        )
        bad = None  # boolean mask of failing rows, for row-level expectations
        success = True
        if kind == "expect_table_columns_to_match_ordered_list":
            success = list(frame.columns) == list(kw["column_list"])
        elif kind == "expect_table_row_count_to_be_between":
            n = len(frame)
            success = (kw.get("min_value") is None or n >= kw["min_value"]) and (
                kw.get("max_value") is None or n <= kw["max_value"]
            )
        elif kind == "expect_column_values_to_be_in_type_list":
            success = frame[column].dtype.name in kw["type_list"]
        elif kind == "expect_column_values_to_not_be_null":
            bad = isnull(column)
        elif kind == "expect_column_values_to_be_between":
            values = frame[column].to_numpy()
            lo, hi = kw.get("min_value"), kw.get("max_value")
            inside = np.ones(len(values), dtype=bool)
            with np.errstate(invalid="ignore"):
                if lo is not None:
                    inside &= values > lo if kw.get("strict_min") else values >= lo
                if hi is not None:
                    inside &= values < hi if kw.get("strict_max") else values <= hi
            bad = ~inside & ~isnull(column)
        elif kind == "expect_column_values_to_be_in_set":
            values = frame[column].to_numpy()
            bad = ~np.isin(values, kw["value_set"]) & ~isnull(column)
        elif kind == "expect_compound_columns_to_be_unique":
            bad = frame[columns].duplicated(keep=False).to_numpy()
        else:
            raise ValueError(f"pandas_suite does not implement {kind}")
        rows = np.flatnonzero(bad) if bad is not None else None
        if rows is not None:
            success = len(rows) == 0
        outcome = ExpectationOutcome(
            type=kind,
            column=column,
            kind="row" if kind in ROW_LEVEL else "table",
            success=bool(success),
            unexpected_count=0 if rows is None else len(rows),
        )
        outcomes.append(outcome)
        if rows is not None and len(rows):
            label = outcome.label
            for index in rows.tolist():
                reasons.setdefault(index, []).append(label)
    return SuiteOutcome(suite=suite["name"], outcomes=outcomes, row_reasons=reasons)


# -- comparison -----------------------------------------------------------------------------------


def rows_by_label(row_reasons: dict[int, list[str]]) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for row, labels in row_reasons.items():
        for label in labels:
            out.setdefault(label, set()).add(row)
    return out


def compare(gx, pd_, gx_quarantine, pd_quarantine) -> dict[str, Any]:
    """Whether GX and pandas agree, expectation by expectation and row by row."""
    gx_key = [(o.type, o.column, o.kind, o.success, o.unexpected_count) for o in gx.outcomes]
    pd_key = [(o.type, o.column, o.kind, o.success, o.unexpected_count) for o in pd_.outcomes]
    gx_rows, pd_rows = rows_by_label(gx.row_reasons), rows_by_label(pd_.row_reasons)
    row_set_mismatch = sorted(
        label for label in set(gx_rows) | set(pd_rows) if gx_rows.get(label) != pd_rows.get(label)
    )
    counts_vs_rows = all(
        o.unexpected_count == len(gx_rows.get(o.label, ())) for o in gx.outcomes if o.kind == "row"
    )
    failed_gx = sorted(o.label for o in gx.outcomes if not o.success)
    failed_pd = sorted(o.label for o in pd_.outcomes if not o.success)
    outcome_mismatch = [
        {"gx": list(a), "pandas": list(b)} for a, b in zip(gx_key, pd_key, strict=False) if a != b
    ]
    same_reasons = {k: sorted(v) for k, v in gx.row_reasons.items()} == {
        k: sorted(v) for k, v in pd_.row_reasons.items()
    }
    return {
        "failed_expectations_match": failed_gx == failed_pd,
        "outcomes_match": gx_key == pd_key,
        "row_sets_match": not row_set_mismatch,
        "row_reasons_match": same_reasons,
        "quarantine_frames_match": bool(gx_quarantine.equals(pd_quarantine)),
        "gx_unexpected_counts_equal_index_lists": counts_vs_rows,
        "expectations": len(gx_key),
        "failed_expectations": len(failed_gx),
        "failing_rows_gx": len(gx.row_reasons),
        "failing_rows_pandas": len(pd_.row_reasons),
        "row_set_mismatches": row_set_mismatch[:20],
        "outcome_mismatches": outcome_mismatch[:20],
        "gx_errors": [{o.label: o.error} for o in gx.outcomes if o.error][:20],
    }


# -- timing helpers -------------------------------------------------------------------------------


def timed_cpu(fn: Callable[[], Any]) -> tuple[dict[str, float], Any]:
    """Runs ``fn`` once; wall, user and system seconds and minor page faults of this process."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    before, start = os.times(), time.perf_counter()
    value = fn()
    wall, after = time.perf_counter() - start, os.times()
    return {
        "wall_s": wall,
        "user_s": after.user - before.user,
        "sys_s": after.system - before.system,
        "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults,
    }, value


def profile_gx(frame, suite: dict[str, Any]) -> dict[str, Any]:
    """One run_suite under cProfile: where the time goes, by share."""
    from aegis.data.expectations import run_suite

    profiler = cProfile.Profile()
    profiler.enable()
    run_suite(frame, suite)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = max(ct for (_, _, fn), (_, _, _, ct, _) in stats.items() if fn == "run_suite")

    def find(path_end: str, func: str):
        return [
            (key, value)
            for key, value in stats.items()
            if key[0].replace(os.sep, "/").endswith(path_end) and key[2] == func
        ]

    getitem = find("pandas/core/frame.py", "__getitem__")
    masked = find("pandas/core/frame.py", "_getitem_bool_array")
    masked_s = sum(v[3] for _, v in masked)
    masked_calls = sum(v[1] for _, v in masked)
    by_caller: dict[str, float] = {}
    # __getitem__ calls _getitem_bool_array; attribute its cumulative time to the GX caller
    for _, (_, _, _, _, callers) in getitem:
        for (file, _, func), (_, _, _, ct) in callers.items():
            if "great_expectations" in file:
                name = f"{Path(file).stem}.{func}"
                by_caller[name] = by_caller.get(name, 0.0) + ct
    hashing_s = sum(
        v[3]
        for _, v in find(
            "great_expectations/execution_engine/pandas_execution_engine.py",
            "hash_pandas_dataframe",
        )
    )
    take = find("pandas/core/array_algos/take.py", "_take_nd_ndarray")
    return {
        "profiled_total_s": total,
        "dataframe_boolean_mask_indexing_s": masked_s,
        "dataframe_boolean_mask_indexing_calls": masked_calls,
        "dataframe_boolean_mask_indexing_share": masked_s / total,
        "of_which_row_copy_take_s": sum(v[3] for _, v in take),
        "dataframe_getitem_by_gx_caller_s": dict(sorted(by_caller.items(), key=lambda i: -i[1])),
        "batch_hash_pandas_dataframe_s": hashing_s,
        "batch_hash_share": hashing_s / total,
        "rest_s": total - masked_s - hashing_s,
        "rest_share": (total - masked_s - hashing_s) / total,
        "note": (
            "cProfile inflates Python-heavy parts; shares are indicative. getitem by caller "
            "includes column selection, which is cheap."
        ),
    }


def count_mask_selections(frame, suite: dict[str, Any]) -> dict[str, Any] | None:
    """One run_suite with DataFrame boolean-mask selections counted and timed (no cProfile).

    Wraps pandas' private ``DataFrame._getitem_bool_array`` for the one run; a
    selection is "whole" when it keeps >= 99% of the rows (a copy of the frame).
    """
    import pandas as pd

    from aegis.data.expectations import run_suite

    original = getattr(pd.DataFrame, "_getitem_bool_array", None)
    if original is None:
        return None
    tally = {k: {"calls": 0, "seconds": 0.0, "columns_max": 0} for k in ("whole", "small")}

    def counted(self, key):
        start = time.perf_counter()
        out = original(self, key)
        entry = tally["whole" if len(out) >= 0.99 * len(self) else "small"]
        entry["calls"] += 1
        entry["seconds"] += time.perf_counter() - start
        entry["columns_max"] = max(entry["columns_max"], self.shape[1])
        return out

    pd.DataFrame._getitem_bool_array = counted
    try:
        total, _ = timed_cpu(lambda: run_suite(frame, suite))
    finally:
        pd.DataFrame._getitem_bool_array = original
    whole = tally["whole"]
    return {
        "run_suite": total,
        "whole_frame_selections": whole,
        "small_selections": tally["small"],
        "whole_frame_share_of_run": whole["seconds"] / total["wall_s"],
        "seconds_per_whole_frame_selection": whole["seconds"] / max(whole["calls"], 1),
        "note": (
            "GX drops the nulls of the checked column by selecting rows of the whole "
            "batch (all columns), once per map metric it computes"
        ),
    }


def version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    already = "great_expectations" in sys.modules

    print(f"building {args.rows:,} rows x {FEATURES + 1} columns (seed {args.seed}) ...")
    build_s = time.perf_counter()
    frame, injected = make_frame(
        args.rows, bad_fraction=args.bad_fraction, duplicates=args.duplicates, seed=args.seed
    )
    build_s = time.perf_counter() - build_s
    suite = make_suite(args.rows)
    types: dict[str, int] = {}
    for exp in suite["expectations"]:
        types[exp["type"]] = types.get(exp["type"], 0) + 1
    print(
        f"  {frame.memory_usage(index=False).sum() / 1e6:.0f} MB in memory, built in "
        f"{build_s:.1f}s; suite: {len(suite['expectations'])} expectations"
    )

    # -- GX import and first context (excluded from (a)) -----------------------------------
    from aegis.data.quarantine import build_quarantine

    import_s = time.perf_counter()
    import great_expectations  # noqa: F401

    import_s = time.perf_counter() - import_s
    from aegis.data.expectations import run_suite

    small = frame.head(WARMUP_ROWS)
    first_context_s = time.perf_counter()
    run_suite(small, suite)
    first_context_s = time.perf_counter() - first_context_s
    second_small_s = time.perf_counter()
    run_suite(small, suite)
    second_small_s = time.perf_counter() - second_small_s
    print(
        f"  import great_expectations {import_s:.2f}s"
        f"{' (already imported!)' if already else ''}; first run_suite on {WARMUP_ROWS:,} rows "
        f"{first_context_s:.2f}s (second {second_small_s:.2f}s)"
    )
    pandas_suite(small, suite)  # untimed warm-up of (b)

    # -- (a) and (b), alternating ----------------------------------------------------------
    gx_runs: list[dict[str, Any]] = []
    pd_runs: list[dict[str, Any]] = []
    gx_capped = False
    for round_ in range(args.repeats):
        if not gx_capped:
            cost, gx_out = timed_cpu(lambda: run_suite(frame, suite))
            qcost, gx_q = timed_cpu(partial(build_quarantine, frame, gx_out.row_reasons))
            gx_runs.append(
                {
                    "run_suite": cost,
                    "build_quarantine": qcost,
                    "total_s": cost["wall_s"] + qcost["wall_s"],
                }
            )
            print(
                f"  round {round_ + 1}: GX {gx_runs[-1]['total_s']:.2f}s (run_suite "
                f"{cost['wall_s']:.2f}s, user {cost['user_s']:.2f}s sys {cost['sys_s']:.2f}s, "
                f"{cost['minor_faults']:,} page faults)",
                end="",
            )
            if round_ == 0 and gx_runs[0]["total_s"] > args.gx_budget:
                gx_capped = True
        else:
            print(f"  round {round_ + 1}: GX skipped (over --gx-budget)", end="")
        cost, pd_out = timed_cpu(lambda: pandas_suite(frame, suite))
        qcost, pd_q = timed_cpu(partial(build_quarantine, frame, pd_out.row_reasons))
        pd_runs.append(
            {"checks": cost, "build_quarantine": qcost, "total_s": cost["wall_s"] + qcost["wall_s"]}
        )
        print(f"; pandas {pd_runs[-1]['total_s']:.3f}s")
    agreement = compare(gx_out, pd_out, gx_q, pd_q)

    # -- extra: compound uniqueness alone --------------------------------------------------
    compound: dict[str, Any] | None = None
    if not args.no_compound:
        csuite = compound_suite()
        run_suite(small, csuite)
        c_gx: list[float] = []
        c_pd: list[float] = []
        for _ in range(1 if gx_capped else args.repeats):
            cost, c_gx_out = timed_cpu(lambda: run_suite(frame, csuite))
            c_gx.append(cost["wall_s"])
            cost, c_pd_out = timed_cpu(lambda: pandas_suite(frame, csuite))
            c_pd.append(cost["wall_s"])
        same = rows_by_label(c_gx_out.row_reasons) == rows_by_label(c_pd_out.row_reasons)
        o_gx, o_pd = c_gx_out.outcomes[0], c_pd_out.outcomes[0]
        compound = {
            "expectation": "expect_compound_columns_to_be_unique over the 19 features",
            "in_main_measurement": False,
            "gx_run_suite": summary(c_gx),
            "pandas_duplicated": summary(c_pd),
            "ratio_gx_over_pandas_best": min(c_gx) / min(c_pd),
            "unexpected_count_gx": o_gx.unexpected_count,
            "unexpected_count_pandas": o_pd.unexpected_count,
            "row_sets_match": same and o_gx.success == o_pd.success and not o_gx.error,
            "raw_seconds": {"gx": c_gx, "pandas": c_pd},
        }
        print(
            f"  compound uniqueness alone: GX {min(c_gx):.2f}s, pandas duplicated "
            f"{min(c_pd):.2f}s, rows {o_gx.unexpected_count} vs {o_pd.unexpected_count}"
        )

    # -- where GX spends its time ----------------------------------------------------------
    profile = None
    if not args.no_profile:
        print("  profiling one more GX run, then counting its row selections in another ...")
        profile = profile_gx(frame, suite)
        profile["mask_selections"] = count_mask_selections(frame, suite)

    # -- results ---------------------------------------------------------------------------
    gx_total = [r["total_s"] for r in gx_runs]
    gx_suite = [r["run_suite"]["wall_s"] for r in gx_runs]
    pd_total = [r["total_s"] for r in pd_runs]
    pd_checks = [r["checks"]["wall_s"] for r in pd_runs]
    best_gx, best_pd = min(gx_total), min(pd_total)
    ratio = best_gx / best_pd
    ratio_median = statistics.median(gx_total) / statistics.median(pd_total)
    at_goal_size = args.rows == GOAL_ROWS
    met = best_gx <= GOAL_SECONDS if at_goal_size else None
    median_gx = statistics.median(gx_total)
    met_median = median_gx <= GOAL_SECONDS if at_goal_size else None
    best = min(gx_runs, key=lambda r: r["total_s"])
    cpu_share = (best["run_suite"]["user_s"] + best["run_suite"]["sys_s"]) / best["run_suite"][
        "wall_s"
    ]

    print()
    print(
        f"{args.rows:,} rows x {FEATURES + 1} columns, {len(suite['expectations'])} expectations "
        f"({sum(o.kind == 'row' for o in gx_out.outcomes)} row-level), "
        f"{agreement['failing_rows_gx']:,} failing rows; best of {len(gx_runs)} (GX) / "
        f"{len(pd_runs)} (pandas)"
    )
    print(
        f"  (a) GX run_suite + build_quarantine {best_gx:7.2f}s  "
        f"{args.rows / best_gx:12,.0f} rows/s"
        f"  (run_suite alone {min(gx_suite):.2f}s; CPU/wall {cpu_share:.2f})"
    )
    print(
        f"  (b) pandas checks + build_quarantine {best_pd:6.3f}s  {args.rows / best_pd:12,.0f} "
        f"rows/s  (checks alone {min(pd_checks):.3f}s)"
    )
    print(f"  ratio GX / pandas {ratio:.1f}x (median {ratio_median:.1f}x)")
    print(
        f"  agreement: failed expectations {agreement['failed_expectations_match']}, outcomes "
        f"{agreement['outcomes_match']}, row sets {agreement['row_sets_match']}, reasons "
        f"{agreement['row_reasons_match']}, quarantine frames "
        f"{agreement['quarantine_frames_match']}"
    )
    goal_text = ("MET" if met else "MISSED") if at_goal_size else f"n/a at {args.rows:,} rows"
    print(f"  goal GX <= {GOAL_SECONDS}s at {GOAL_ROWS:,} rows: {goal_text} (best)")
    if at_goal_size and met != met_median:
        print(
            f"  but the median ({median_gx:.2f}s) {'meets' if met_median else 'misses'} it; "
            f"first full-size run {gx_total[0]:.2f}s"
        )
    slow = [r["run_suite"] for r in gx_runs]
    print(
        f"  GX user CPU {min(r['user_s'] for r in slow):.2f}-{max(r['user_s'] for r in slow):.2f}s,"
        f" system CPU {min(r['sys_s'] for r in slow):.2f}-{max(r['sys_s'] for r in slow):.2f}s,"
        f" page faults {min(r['minor_faults'] for r in slow):,}-"
        f"{max(r['minor_faults'] for r in slow):,} per run"
    )
    if gx_capped:
        print(f"  note: GX ran once only (over --gx-budget {args.gx_budget}s)")
    if profile:
        print(
            f"  GX profile: {profile['dataframe_boolean_mask_indexing_share']:.0%} in DataFrame "
            f"boolean-mask indexing ({profile['dataframe_boolean_mask_indexing_calls']} calls), "
            f"{profile['batch_hash_share']:.0%} hashing the batch, {profile['rest_share']:.0%} rest"
        )
        sel = profile["mask_selections"]
        if sel:
            whole = sel["whole_frame_selections"]
            print(
                f"  unprofiled run: {whole['calls']} whole-frame row selections "
                f"({whole['columns_max']} columns) took {whole['seconds']:.2f}s of "
                f"{sel['run_suite']['wall_s']:.2f}s ({sel['whole_frame_share_of_run']:.0%})"
            )

    notes = []
    if gx_capped:
        notes.append(f"GX ran once: the first run exceeded --gx-budget {args.gx_budget}s")
    if not at_goal_size:
        notes.append(f"goal is defined at {GOAL_ROWS:,} rows; met is null at {args.rows:,}")
    if at_goal_size and met != met_median:
        notes.append(
            f"goal {'met' if met else 'missed'} by the best run ({best_gx:.2f}s) but "
            f"{'met' if met_median else 'missed'} by the median ({median_gx:.2f}s): GX runs differ "
            "mainly in system CPU time (minor page faults while allocating row copies); see raw"
        )
    if already:
        notes.append("great_expectations was imported before the import was timed")
    path = write_result(
        f"bench_validate-{args.tag}" if args.tag else "bench_validate",
        {
            "title": "GX validation with row-level results vs a pandas pass over the same checks",
            "parameters": {
                "rows": args.rows,
                "columns": FEATURES + 1,
                "features_float64": FEATURES,
                "label_int64": 1,
                "repeats": args.repeats,
                "bad_fraction_per_column_and_kind": args.bad_fraction,
                "duplicates": args.duplicates,
                "seed": args.seed,
                "gx_budget_s": args.gx_budget,
                "warmup_rows": WARMUP_ROWS,
                "result_format": "COMPLETE",
                "order": "alternating GX, pandas per round after one untimed warm-up of each",
            },
            "versions": {
                d: version(d) for d in ("great_expectations", "pandas", "numpy", "pyarrow")
            },
            "dataset": {
                "memory_mb": frame.memory_usage(index=False).sum() / 1e6,
                "build_s": build_s,
                "injected": injected,
            },
            "suite": {
                "expectations": len(suite["expectations"]),
                "row_level": sum(o.kind == "row" for o in gx_out.outcomes),
                "by_type": types,
                "compound_uniqueness": "not in the main suite; measured alone (see extra)",
            },
            "gx_startup": {
                "import_great_expectations_s": import_s,
                "first_run_suite_small_s": first_context_s,
                "second_run_suite_small_s": second_small_s,
                "excluded_from_main": True,
            },
            "raw": {"gx": gx_runs, "pandas": pd_runs},
            "gx": {
                "total": summary(gx_total),
                "run_suite": summary(gx_suite),
                "build_quarantine": summary([r["build_quarantine"]["wall_s"] for r in gx_runs]),
                "rows_per_s_best": args.rows / best_gx,
                "cpu_over_wall_best_run": cpu_share,
                "runs": len(gx_runs),
            },
            "pandas": {
                "total": summary(pd_total),
                "checks": summary(pd_checks),
                "build_quarantine": summary([r["build_quarantine"]["wall_s"] for r in pd_runs]),
                "rows_per_s_best": args.rows / best_pd,
                "runs": len(pd_runs),
            },
            "ratios": {"gx_over_pandas_best": ratio, "gx_over_pandas_median": ratio_median},
            "agreement": agreement,
            "extra_compound_uniqueness": compound,
            "gx_profile": profile,
            "goal": {
                "metric": "gx.total.best_s (run_suite + build_quarantine)",
                "op": "<=",
                "target": GOAL_SECONDS,
                "at_rows": GOAL_ROWS,
                "value": best_gx,
                "met": met,
                "median_s": median_gx,
                "met_by_median": met_median,
                "first_full_size_run_s": gx_total[0],
                "met_by_first_full_size_run": (
                    gx_total[0] <= GOAL_SECONDS if at_goal_size else None
                ),
            },
            "notes": notes,
            "total_benchmark_seconds": time.perf_counter() - started,
        },
    )
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
