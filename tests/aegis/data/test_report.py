"""The validation report: one self-contained HTML page that escapes whatever the data holds."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pandas as pd
import pytest
from validation_helpers import digits_frame

from aegis.data.quarantine import build_quarantine
from aegis.data.report import render_report
from aegis.data.validate import DriftResult, ValidationResult

HOSTILE = "<script>alert('x')</script>"
TAGS = re.compile(r"<\s*/?\s*(script|img|iframe|link|object|embed|svg|a|form|base)\b", re.I)


def _result(
    *,
    name: str = "digits",
    drift: DriftResult | None = None,
    table_failures: list[str] | None = None,
    reasons: dict[str, int] | None = None,
    failures: list[dict] | None = None,
    quarantined: int = 0,
) -> ValidationResult:
    return ValidationResult(
        name=name,
        dataset="sha256:" + "1" * 64,
        suite=name,
        suite_digest="sha256:" + "2" * 64,
        success=not table_failures,
        expectations={"evaluated": 198, "passed": 198 - len(failures or []), "failed": 0},
        failures=failures or [],
        rows={
            "total": 1797,
            "features": 64,
            "quarantined": quarantined,
            "fraction": round(quarantined / 1797, 6),
            "max_fraction": 0.05,
        },
        quarantine_reasons=reasons or {},
        drift=drift or DriftResult(reference=None, max_psi=0.25),
        table_failures=table_failures or [],
        report=f"validation/{name}/report.html",
        profile_digest="sha256:" + "3" * 64,
    )


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs += attrs


def _parse(html: str) -> _Tags:
    parser = _Tags()
    parser.feed(html)
    return parser


def test_report_is_self_contained(template_env):
    frame = digits_frame(template_env)
    quarantine = build_quarantine(frame, {3: ["column_values_to_be_between(pixel_0_3)"]})
    drift = DriftResult("sha256:" + "9" * 64, 0.25, {"pixel_0_3": 0.01}, 0.02, True)
    html = render_report(
        _result(drift=drift, reasons={"column_values_to_be_between(pixel_0_3)": 1}, quarantined=1),
        quarantine,
    )

    assert html.startswith("<!doctype html>")
    parsed = _parse(html)
    assert "script" not in parsed.tags
    assert not {"img", "link", "iframe", "object", "embed", "a"} & parsed.tags
    assert not re.search(r"https?://", html)
    assert not re.search(r"url\(", html)
    # only inline style and class attributes: nothing to fetch, nothing to run
    assert {a for a, _ in parsed.attrs} <= {"charset", "class", "style"}


def test_report_escapes_hostile_names_reasons_and_values(template_env):
    frame = digits_frame(template_env).head(5)
    frame = frame.rename(columns={"pixel_0_1": HOSTILE})
    frame["pixel_0_0"] = frame["pixel_0_0"].astype(object)
    frame.loc[2, "pixel_0_0"] = "<img src=x onerror=alert(1)>"
    reason = f"column_values_to_be_between({HOSTILE})"
    quarantine = build_quarantine(frame, {2: [reason]})
    drift = DriftResult("sha256:" + "9" * 64, 0.25, {HOSTILE: 0.9}, None, False)
    failure = {
        "expectation": reason,
        "kind": "row",
        "unexpected_count": 1,
        "observed": HOSTILE,
        "error": "</td></tr></table><script>x()</script>",
    }

    html = render_report(
        _result(
            name=HOSTILE,
            drift=drift,
            table_failures=[f"table_columns_to_match_ordered_list({HOSTILE})"],
            reasons={reason: 1},
            failures=[failure],
            quarantined=1,
        ),
        quarantine,
    )

    assert not TAGS.search(html), TAGS.search(html)
    assert "<script" not in html.lower()
    assert "&lt;script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "script" not in _parse(html).tags


def test_drift_table_when_a_reference_exists():
    drift = DriftResult(
        reference="sha256:" + "9" * 64,
        max_psi=0.25,
        features={"pixel_0_3": 0.4, "pixel_5_5": 0.01},
        label=0.12,
        passed=False,
    )
    html = render_report(_result(drift=drift), pd.DataFrame())

    assert "Drift (PSI) against sha256:99999999999" in html
    assert "FAILED" in html
    rows = re.findall(r"<tr><td>([^<]+)</td><td>([0-9.]+)</td><td><span class='([^']+)'", html)
    assert rows == [
        ("pixel_0_3", "0.4000", "bar over"),  # worst first, over the gate
        ("label", "0.1200", "bar"),
        ("pixel_5_5", "0.0100", "bar"),
    ]


def test_no_drift_table_for_the_first_version():
    html = render_report(_result(), pd.DataFrame())
    assert "no reference yet" in html
    assert "Drift (PSI) against" not in html
    assert "Every expectation passed." in html
    assert "No row was quarantined." in html


def test_table_failures_and_quarantine_are_listed(template_env):
    frame = digits_frame(template_env)
    reasons = {r: ["column_values_to_be_between(pixel_0_3)"] for r in range(60)}
    html = render_report(
        _result(
            table_failures=["table_row_count_to_be_between"],
            reasons={"column_values_to_be_between(pixel_0_3)": 60},
            quarantined=60,
        ),
        build_quarantine(frame, reasons),
        max_rows=10,
    )
    assert "Table-level failures" in html
    assert "<code>table_row_count_to_be_between</code>" in html
    assert "First 10 of 60 rows" in html
    assert "60 of 1797" in html


@pytest.mark.parametrize("passed", [True, False])
def test_status_in_the_heading(passed):
    failures = None if passed else ["table_row_count_to_be_between"]
    html = render_report(_result(table_failures=failures), pd.DataFrame())
    heading = re.search(r"<h1>.*</h1>", html).group(0)
    assert ("passed" in heading) is passed
    assert ("FAILED" in heading) is not passed
