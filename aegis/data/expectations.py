"""Running a Great Expectations 1.x suite on a DataFrame, row by row.

The suite is JSON (``expectations/<name>.json``) run in an ephemeral GX
context with ``COMPLETE`` results, so every column-map expectation reports
the index of each failing row. Those are *row-level* failures (the row is
quarantined); every other expectation, and any expectation that could not
be evaluated (a missing column, a wrong type), is *table-level* and stops
the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aegis.errors import ConfigError, UnsafeFileError
from aegis.fileutil import read_regular

SUITE_LIMIT = 4 * 1024 * 1024  # a suite is a few KiB of JSON

# Column-map expectations: GX reports the failing rows of these.
ROW_LEVEL = frozenset(
    {
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_not_be_in_set",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_unique",
        "expect_column_values_to_match_regex",
        "expect_compound_columns_to_be_unique",
        "expect_multicolumn_values_to_be_unique",
    }
)


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's result."""

    type: str
    column: str | None
    kind: str  # "row" or "table"
    success: bool
    unexpected_count: int = 0
    observed: str = ""
    error: str = ""

    @property
    def label(self) -> str:
        """Short name used as a quarantine reason, e.g. ``values_to_be_between(pixel_0_3)``."""
        short = self.type.removeprefix("expect_")
        return f"{short}({self.column})" if self.column else short


@dataclass(frozen=True)
class SuiteOutcome:
    """All outcomes of one suite, and the reasons per failing row position."""

    suite: str
    outcomes: list[ExpectationOutcome]
    row_reasons: dict[int, list[str]] = field(default_factory=dict)

    @property
    def table_failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success and o.kind == "table"]

    @property
    def passed(self) -> int:
        return sum(o.success for o in self.outcomes)

    @property
    def failed(self) -> int:
        return len(self.outcomes) - self.passed


def read_suite(path: Path) -> tuple[dict[str, Any], str]:
    """Reads a suite's JSON once: the suite and the ``sha256:`` of the bytes it came from.

    Raises:
        ConfigError: Missing, not a regular file, too large, not JSON (or
            nested too deeply), or without a name and a list of expectations.
    """
    try:
        raw = read_regular(path, limit=SUITE_LIMIT, what=path.name)
        data = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no expectation suite for this dataset") from None
    except UnsafeFileError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.detail})") from None
    except (OSError, ValueError, RecursionError):
        raise ConfigError(f"{path}: not valid JSON") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("name"), str)
        or not isinstance(data.get("expectations"), list)
        or not data["expectations"]
    ):
        raise ConfigError(f"{path}: needs a 'name' and a non-empty 'expectations' list")
    return data, "sha256:" + hashlib.sha256(raw).hexdigest()


def run_suite(frame, suite: dict[str, Any]) -> SuiteOutcome:
    """Validates ``frame`` (positional index 0..n-1) against ``suite``.

    Raises:
        ConfigError: GX refused the suite (unknown expectation type, bad kwargs).
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    for logger_name in [n for n in logging.root.manager.loggerDict if n.startswith("great_exp")]:
        logging.getLogger(logger_name).setLevel(logging.ERROR)  # GX logs temp dirs at INFO
    frame = frame.reset_index(drop=True)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    try:
        gx_suite = context.suites.add(gx.ExpectationSuite(**_suite_fields(suite)))
    except ConfigError:
        raise
    except Exception as exc:  # GX raises many types for a malformed suite
        raise ConfigError(f"expectation suite '{suite['name']}': {exc}") from None
    batch = (
        context.data_sources.add_pandas("aegis")
        .add_dataframe_asset("dataset")
        .add_batch_definition_whole_dataframe("whole")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    result = batch.validate(gx_suite, result_format={"result_format": "COMPLETE"})

    outcomes: list[ExpectationOutcome] = []
    reasons: dict[int, list[str]] = {}
    for res in result.results:
        config = res.expectation_config
        kwargs = config.kwargs
        columns = kwargs.get("column_list") or []
        column = kwargs.get("column") or (
            "+".join(columns)
            if 0 < len(columns) <= 3
            else f"{len(columns)} columns"
            if columns
            else None
        )
        error = _raised(res.exception_info)
        details = res.result or {}
        indices = details.get("unexpected_index_list") or []
        # A row-level expectation that failed without naming rows could not be
        # evaluated row by row: quarantining nothing would let it pass silently.
        row_level = config.type in ROW_LEVEL and not error and (res.success or bool(indices))
        kind = "row" if row_level else "table"
        outcome = ExpectationOutcome(
            type=config.type,
            column=column,
            kind=kind,
            success=bool(res.success) and not error,
            unexpected_count=int(details.get("unexpected_count") or 0),
            observed=_short(details.get("observed_value")),
            error=error[:200],
        )
        outcomes.append(outcome)
        if kind == "row" and not outcome.success:
            for index in indices:
                reasons.setdefault(int(index), []).append(outcome.label)
    return SuiteOutcome(suite=suite["name"], outcomes=outcomes, row_reasons=reasons)


def _suite_fields(suite: dict[str, Any]) -> dict[str, Any]:
    """The suite's fields, each expectation built here so a bad one is an error.

    ``gx.ExpectationSuite`` only logs an expectation it cannot build (an
    unknown type, bad kwargs) and drops it: the suite would then run without it.

    Raises:
        ConfigError: An expectation is not a mapping, or GX cannot build it.
    """
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    expectations = []
    for index, spec in enumerate(suite["expectations"]):
        what = spec.get("type", "?") if isinstance(spec, dict) else "?"
        try:
            if not isinstance(spec, dict):
                raise TypeError("not a mapping")
            expectations.append(ExpectationConfiguration(**spec).to_domain_obj())
        except Exception as exc:  # GX raises many types for a malformed expectation
            message = str(getattr(exc, "message", None) or exc).splitlines()[0]
            raise ConfigError(
                f"expectation suite '{suite['name']}': expectation {index} ({what}): {message}"
            ) from None
    return {"name": suite["name"], "expectations": expectations, "meta": suite.get("meta", {})}


def _raised(info: dict[str, Any] | None) -> str:
    """The exception message of a result's ``exception_info``, or "" if none was raised.

    GX 1.x reports either one flat record or one record per metric it failed
    to compute (keyed by the metric's id), e.g. for a missing column.
    """
    if not info:
        return ""
    records = [info] if "raised_exception" in info else list(info.values())
    for record in records:
        if isinstance(record, dict) and record.get("raised_exception"):
            return str(record.get("exception_message") or "exception while evaluating")
    return ""


def _short(value: Any) -> str:
    if value is None:
        return ""
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."
