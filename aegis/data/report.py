"""The validation report: one self-contained HTML page (no scripts, no network).

It plays the part of Great Expectations' Data Docs for one validation: the
suite's results, the quarantined rows and why, and drift per column.
"""

from __future__ import annotations

from html import escape
from typing import Any

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:70rem}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}
td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;font-size:.9rem}
th{background:#f3f3f3}.ok{color:#11772d}.bad{color:#b00020;font-weight:600}
.bar{background:#4a78c2;height:.7rem;display:inline-block}.over{background:#b00020}
code{background:#f3f3f3;padding:0 .2rem}
"""


def _row(cells: list[Any], cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<tr{attr}>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + "</tr>"


def _status(ok: bool) -> str:
    return '<span class="ok">passed</span>' if ok else '<span class="bad">FAILED</span>'


def render_report(result, quarantine, *, max_rows: int = 50) -> str:
    """Renders ``result`` (a ValidationResult) and its quarantine table as HTML."""
    r = result
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Validation of {escape(r.name)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Validation of <code>{escape(r.name)}</code>: {_status(r.success)}</h1>",
        "<table>",
        _row(["dataset digest", r.dataset]),
        _row(["expectation suite", f"{r.suite} ({r.suite_digest[:19]}...)"]),
        _row(
            [
                "expectations",
                f"{r.expectations['passed']} passed, {r.expectations['failed']} failed "
                f"of {r.expectations['evaluated']}",
            ]
        ),
        _row(
            [
                "rows quarantined",
                f"{r.rows['quarantined']} of {r.rows['total']} ({r.rows['fraction']:.2%}; "
                f"gate {r.rows['max_fraction']:.2%})",
            ]
        ),
        "</table>",
    ]
    if r.table_failures:
        parts.append("<h2 class='bad'>Table-level failures (the run stops)</h2><ul>")
        parts += [f"<li><code>{escape(f)}</code></li>" for f in r.table_failures]
        parts.append("</ul>")
    parts.append("<h2>Failed expectations</h2>")
    if r.failures:
        parts.append(
            "<table><tr><th>expectation</th><th>level</th><th>unexpected rows</th>"
            "<th>observed</th><th>error</th></tr>"
        )
        parts += [
            _row([f["expectation"], f["kind"], f["unexpected_count"], f["observed"], f["error"]])
            for f in r.failures
        ]
        parts.append("</table>")
    else:
        parts.append("<p class='ok'>Every expectation passed.</p>")
    parts.append(_quarantine_section(r, quarantine, max_rows))
    if r.screens:
        from aegis.data.screen_report import screens_section

        parts.append(screens_section(r.screens, quarantine))
    parts.append(_drift_section(r.drift))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _quarantine_section(r, quarantine, max_rows: int) -> str:
    if not len(quarantine):
        return "<h2>Quarantine</h2><p class='ok'>No row was quarantined.</p>"
    out = ["<h2>Quarantine</h2><table><tr><th>reason</th><th>rows</th></tr>"]
    out += [_row([reason, count]) for reason, count in r.quarantine_reasons.items()]
    out.append("</table>")
    shown = quarantine.head(max_rows)
    cols = list(shown.columns[:8])
    out.append(
        f"<p>First {len(shown)} of {len(quarantine)} rows (first {len(cols)} columns):</p>"
        "<table><tr>" + "".join(f"<th>{escape(str(c))}</th>" for c in cols) + "</tr>"
    )
    out += [_row([row[c] for c in cols]) for _, row in shown.iterrows()]
    out.append("</table>")
    return "\n".join(out)


def _drift_section(drift) -> str:
    if drift.reference is None:
        return "<h2>Drift</h2><p>First validated version of this dataset: no reference yet.</p>"
    scores = dict(drift.features)
    if drift.label is not None:
        scores = {"label": drift.label, **scores}
    out = [
        f"<h2>Drift (PSI) against {escape(drift.reference[:19])}...: {_status(drift.passed)}</h2>",
        f"<p>Gate: every column's PSI &le; {drift.max_psi}.</p>",
        "<table><tr><th>column</th><th>PSI</th><th></th></tr>",
    ]
    top = max(max(scores.values(), default=0.0), drift.max_psi)
    for name, psi in sorted(scores.items(), key=lambda kv: -kv[1]):
        width = int(200 * psi / top) if top else 0
        cls = "bar over" if psi > drift.max_psi else "bar"
        out.append(
            f"<tr><td>{escape(name)}</td><td>{psi:.4f}</td>"
            f"<td><span class='{cls}' style='width:{width}px'></span></td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)
