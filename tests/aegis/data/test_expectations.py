"""Great Expectations suites run for real on the demo data: row- and table-level failures.

Each ``run_suite`` call is a real GX validation (about a second for digits);
the shipped suites are the ones a workspace is created with.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from validation_helpers import BAD_PIXEL, digits_frame, sklearn_frame

from aegis.data.expectations import read_suite, run_suite
from aegis.errors import ConfigError

SUITES = Path(__file__).resolve().parents[3] / "expectations"


@pytest.fixture(scope="module")
def digits(template_env) -> pd.DataFrame:
    return digits_frame(template_env)


@pytest.fixture(scope="module")
def digits_suite() -> dict:
    return read_suite(SUITES / "digits.json")[0]


@pytest.mark.parametrize("name", ["digits", "breast_cancer"])
def test_shipped_suite_passes_on_pristine_demo_data(name, tmp_path):
    suite = read_suite(SUITES / f"{name}.json")[0]
    frame = sklearn_frame(name, tmp_path)

    outcome = run_suite(frame, suite)

    assert outcome.suite == name
    assert outcome.failed == 0, [o for o in outcome.outcomes if not o.success]
    assert outcome.passed == len(suite["expectations"])
    assert outcome.row_reasons == {} and outcome.table_failures == []
    types = {o.type for o in outcome.outcomes}
    # schema, types, ranges, label set, nulls, uniqueness, row count
    assert {
        "expect_table_columns_to_match_ordered_list",
        "expect_column_values_to_be_in_type_list",
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_not_be_null",
        "expect_compound_columns_to_be_unique",
        "expect_table_row_count_to_be_between",
    } <= types


def test_row_level_failures_map_to_their_rows_and_reasons(digits, digits_suite):
    frame = digits.copy()
    frame.loc[3, BAD_PIXEL] = 99.0  # out of 0..16
    frame.loc[5, "label"] = 11  # not a digit
    frame.loc[7, "pixel_2_2"] = np.nan  # null
    frame = pd.concat([frame, frame.iloc[[10]]], ignore_index=True)  # row 1797 repeats row 10

    outcome = run_suite(frame, digits_suite)

    unique = "compound_columns_to_be_unique(64 columns)"
    assert outcome.row_reasons == {
        3: [f"column_values_to_be_between({BAD_PIXEL})"],
        5: ["column_values_to_be_in_set(label)"],
        7: ["column_values_to_not_be_null(pixel_2_2)"],
        10: [unique],
        1797: [unique],
    }
    assert outcome.table_failures == []
    failed = {o.label: o for o in outcome.outcomes if not o.success}
    assert {o.kind for o in failed.values()} == {"row"}
    assert failed[unique].unexpected_count == 2
    assert failed["column_values_to_be_in_set(label)"].unexpected_count == 1
    assert outcome.failed == 4 and outcome.passed == len(digits_suite["expectations"]) - 4


def test_a_row_failing_several_checks_lists_each_reason(digits, digits_suite):
    frame = digits.copy()
    frame.loc[0, [BAD_PIXEL, "pixel_5_5"]] = -1.0

    outcome = run_suite(frame, digits_suite)

    assert sorted(outcome.row_reasons[0]) == [
        f"column_values_to_be_between({BAD_PIXEL})",
        "column_values_to_be_between(pixel_5_5)",
    ]
    assert list(outcome.row_reasons) == [0]


def _missing_column(f: pd.DataFrame) -> pd.DataFrame:
    return f.drop(columns=[BAD_PIXEL])


def _extra_column(f: pd.DataFrame) -> pd.DataFrame:
    return f.assign(extra=1.0)


def _string_column(f: pd.DataFrame) -> pd.DataFrame:
    return f.assign(**{BAD_PIXEL: f[BAD_PIXEL].astype(str)})


def _too_few_rows(f: pd.DataFrame) -> pd.DataFrame:
    return f.head(100)


@pytest.mark.parametrize(
    ("alter", "expected"),
    [
        (_missing_column, "table_columns_to_match_ordered_list"),
        (_extra_column, "table_columns_to_match_ordered_list"),
        (_string_column, f"column_values_to_be_in_type_list({BAD_PIXEL})"),
        (_too_few_rows, "table_row_count_to_be_between"),
    ],
    ids=["missing-column", "extra-column", "string-dtype", "too-few-rows"],
)
def test_table_level_failures(digits, digits_suite, alter, expected):
    outcome = run_suite(alter(digits), digits_suite)

    labels = [o.label for o in outcome.table_failures]
    assert any(label.startswith(expected) for label in labels), labels
    # nothing is quarantined for a broken table: the run stops instead
    assert outcome.row_reasons == {}


def test_checks_that_cannot_run_on_a_missing_column_are_table_level(digits, digits_suite):
    """GX reports them as failed with an exception per metric, not as failing rows."""
    outcome = run_suite(_missing_column(digits), digits_suite)

    on_column = [o for o in outcome.outcomes if o.column == BAD_PIXEL]
    assert len(on_column) == 3  # type list, not null, between
    for o in on_column:
        assert not o.success and o.kind == "table", o
    between = next(o for o in on_column if o.type == "expect_column_values_to_be_between")
    assert "does not exist" in between.error


def test_range_check_on_a_string_column_is_table_level(digits, digits_suite):
    """Without the type check, a range check on strings must still stop the run."""
    suite = {
        "name": "ranges-only",
        "expectations": [
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": BAD_PIXEL, "min_value": 0, "max_value": 16},
            }
        ],
    }
    (outcome,) = run_suite(_string_column(digits), suite).outcomes
    assert not outcome.success and outcome.kind == "table"


# -- read_suite and malformed suites -------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "no expectation suite"),
        ("{not json", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        ("[]", "needs a 'name'"),
        ('{"name": "digits"}', "needs a 'name'"),
        ('{"name": "digits", "expectations": []}', "non-empty"),
        ('{"expectations": [{"type": "x", "kwargs": {}}]}', "needs a 'name'"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ("fifo", "cannot read"),
    ],
    ids=[
        "missing",
        "not-json",
        "not-utf8",
        "list",
        "no-expectations",
        "empty",
        "no-name",
        "deep",
        "fifo",
    ],
)
def test_read_suite_errors(tmp_path, content, fragment):
    path = tmp_path / "suite.json"
    if content == "fifo":  # a planted FIFO would block a plain read forever
        os.mkfifo(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=fragment) as exc:
        read_suite(path)
    assert exc.value.exit_code == 2


def test_read_suite_reads_shipped_suites():
    for name in ("digits", "breast_cancer"):
        suite = read_suite(SUITES / f"{name}.json")[0]
        assert suite["name"] == name
        assert suite == json.loads((SUITES / f"{name}.json").read_text())


@pytest.mark.parametrize(
    ("expectation", "fragment"),
    [
        (
            {"type": "expect_column_values_to_be_purple", "kwargs": {"column": "label"}},
            "expect_column_values_to_be_purple not found",
        ),
        (
            {"type": "expect_column_values_to_be_between", "kwargs": {"column": "label", "x": 1}},
            "expect_column_values_to_be_between",
        ),
        ({"kwargs": {"column": "label"}}, "type"),
        ("expect_column_values_to_not_be_null", "not a mapping"),
    ],
    ids=["unknown-type", "bad-kwargs", "no-type", "not-a-mapping"],
)
def test_malformed_expectation_is_a_config_error(digits, expectation, fragment):
    """GX itself would only log such an expectation and run the suite without it."""
    suite = {
        "name": "bad",
        "expectations": [
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "label"}},
            expectation,
        ],
    }
    with pytest.raises(ConfigError, match=fragment) as exc:
        run_suite(digits.head(10), suite)
    assert "expectation 1" in str(exc.value)
    assert "\n" not in str(exc.value)
