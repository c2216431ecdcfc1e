"""The incident report: one self-contained HTML page (no scripts, no network).

What the production monitor saw and did: a table of its incidents (when the first bad
request came, when it was detected and contained, by what), their times to detect and
to contain, and for every model version a plot per signal of its value in each tested
window against its threshold, the breaching windows and the incidents marked. The
plots are :mod:`aegis.htmlreport`'s (matplotlib Agg, base64 PNG data URIs); every string
is HTML-escaped, and the page's Content-Security-Policy allows no script and no fetch.
Data that is absent (no window history, a timestamp that does not parse) gives a note.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from html import escape

from matplotlib.figure import Figure

from aegis.htmlreport import STYLE, figure, is_num, plain, row
from aegis.monitor.incidents import Incident
from aegis.monitor.windows import WindowRecord
from aegis.timeutil import parse_utc

WIDE = (10.0, 3.6)  # inches: the times plot and the signal plots span the page
BARS = 40  # the times plot shows the newest this many incidents
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_NO_HISTORY = (
    "No window history for this version: its windows were tested before the history was "
    "kept, or are older than the newest read (--last)."
)

# the incidents' times drawn on their signals' plots: attribute, legend, (line, colour)
_MARKS = [
    ("first_bad", "first bad request", (":", "gray")),
    ("detected", "incident detected", ("-.", "C3")),
    ("contained", "contained", ("--", "C2")),
]

_COLUMNS = ["incident", "model@version", "signals", "first bad request", "detected",
            "contained", "TTD s", "TTC s", "action", "top client share"]  # fmt: skip

Draw = Callable[[Figure], None]


def render_incident_report(
    *, windows: list[WindowRecord], incidents: list[Incident], title: str
) -> str:
    """Renders the monitor's windows and incidents as one self-contained HTML page.

    Args:
        windows: Tested windows, oldest first (:func:`aegis.monitor.windows.read_windows`).
        incidents: Incidents, oldest first (:func:`aegis.monitor.incidents.incidents`).
        title: Page heading (escaped).

    Returns:
        The HTML page (no scripts, no external resources).
    """
    versions = _by_version(windows)
    contained = sum(i.contained is not None for i in incidents)
    overview = (
        f"{len(windows)} tested window(s) of {len(versions)} model version(s); "
        f"{len(incidents)} incident(s), {contained} contained."
    )
    recent = incidents[-BARS:]
    times_title = "Time to detect and to contain (seconds after the first bad request)"
    if len(incidents) > BARS:
        times_title += f", the newest {BARS}"
    missing = "no incident has parseable times" if incidents else "no incidents"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">",
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p>{escape(overview)}</p>",
        "<h2>Incidents</h2>",
        _summary(incidents),
        figure(times_title, _times_plot(recent), missing, size=WIDE),
        "<h2>Signals per window</h2>",
        *_version_sections(versions, incidents),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _when(text: str | None) -> datetime | None:
    try:
        return parse_utc(str(text)) if text is not None else None
    except ValueError:
        return None


def _stamp(text: str | None) -> str | None:
    """A table's time: to the second when it parses, else the text as recorded."""
    when = _when(text)
    return text if when is None else when.strftime("%Y-%m-%d %H:%M:%S")


def _contained(incident: Incident) -> str:
    """When containment ended; else what it came to (refused, not served) or that none ran."""
    if incident.contained is not None:
        return _stamp(incident.contained) or ""
    done = incident.containment if isinstance(incident.containment, dict) else {}
    if not done:
        return "not contained"
    reason = done.get("reason")
    return str(done.get("result", "not contained")) + (f": {reason}" if reason else "")


def _ttd(incident: Incident) -> float | None:
    return _duration(incident, "time_to_detect_s")


def _ttc(incident: Incident) -> float | None:
    return _duration(incident, "time_to_contain_s")


def _duration(incident: Incident, name: str) -> float | None:
    """Its time to detect or to contain; None when absent or a timestamp does not parse."""
    try:
        value = getattr(incident, name)
    except (ValueError, TypeError):  # a timestamp this code never wrote
        return None
    return value if is_num(value) else None


def _seconds(value: float | None) -> str | None:
    return None if value is None else f"{value:.1f}"


def _summary(incidents: list[Incident]) -> str:
    if not incidents:
        return "<p class='ok'>No incidents: the monitor has opened none.</p>"
    rows = [row(_COLUMNS, header=True)]
    for i in incidents:
        share = f"{i.top_client_share:.0%}" if is_num(i.top_client_share) else None
        rows.append(
            row(
                [
                    i.id,
                    f"{i.model}@{i.version}",
                    ", ".join(i.signals),
                    _stamp(i.first_bad),
                    _stamp(i.detected),
                    _contained(i),
                    _seconds(_ttd(i)),
                    _seconds(_ttc(i)),
                    i.action,
                    share,
                ]
            )
        )
    return "<table>" + "".join(rows) + "</table>"


def _times_plot(incidents: list[Incident]) -> Draw | None:
    """Bars of each incident's time to detect and, when contained, to contain."""
    points = [(i.id, _ttd(i), _ttc(i)) for i in incidents]
    points = [p for p in points if p[1] is not None or p[2] is not None]
    if not points:
        return None

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        for offset, k, label, color in (
            (-0.2, 1, "time to detect", "C0"),
            (0.2, 2, "time to contain", "C1"),
        ):
            bars = [(x + offset, p[k]) for x, p in enumerate(points) if p[k] is not None]
            if bars:
                ax.bar(*zip(*bars, strict=True), width=0.4, label=label, color=color)
        ax.set_xticks(
            range(len(points)), [plain(p[0]) for p in points], rotation=30, ha="right", fontsize=7
        )
        ax.set_xlim(-0.8, len(points) - 0.2)
        ax.set_ylabel("seconds")
        ax.legend(fontsize=7)

    return draw


def _by_version(windows: list[WindowRecord]) -> dict[tuple[str, str], list[WindowRecord]]:
    out: dict[tuple[str, str], list[WindowRecord]] = {}
    for record in windows:
        out.setdefault((record.model, record.version), []).append(record)
    return out


def _version_sections(
    versions: dict[tuple[str, str], list[WindowRecord]], incidents: list[Incident]
) -> list[str]:
    """Per model version, a plot per signal; a note for a version with incidents only."""
    keys = list(versions)
    keys += list(
        dict.fromkeys(
            (i.model, i.version) for i in incidents if (i.model, i.version) not in versions
        )
    )
    if not keys:
        return ["<p class='note'>No window history: the monitor has recorded no window.</p>"]
    parts = []
    for model, version in keys:
        records = versions.get((model, version), [])
        parts.append(f"<h3>{escape(f'{model}@{version}')}</h3>")
        if not records:
            parts.append(f"<p class='note'>{_NO_HISTORY}</p>")
            continue
        parts.append(
            f"<p>{len(records)} window(s), {escape(_stamp(records[0].start) or '')} to "
            f"{escape(_stamp(records[-1].end) or '')} (UTC).</p>"
        )
        mine = [i for i in incidents if (i.model, i.version) == (model, version)]
        names = sorted({s for r in records for s in r.values}, key=str)
        for signal in names:
            parts.append(
                figure(
                    f"{model}@{version}: {signal}",
                    _signal_plot(records, signal, mine),
                    "no finite value with a parseable time",
                    size=WIDE,
                )
            )
    return parts


def _signal_plot(
    records: list[WindowRecord], signal: str, incidents: list[Incident]
) -> Draw | None:
    """One signal's value per window (at the window's end) against its threshold."""
    timed = [(t, r) for r in records if (t := _when(r.end)) is not None]
    values = [
        (t, r.values[signal], signal in r.breached)
        for t, r in timed
        if is_num(r.values.get(signal))
    ]
    if not values:
        return None
    thresholds = [(t, r.thresholds[signal]) for t, r in timed if is_num(r.thresholds.get(signal))]
    bad = [(t, v) for t, v, breached in values if breached]
    mine = [i for i in incidents if signal in i.signals]
    marks = [
        (label, style, [w for i in mine if (w := _when(getattr(i, attr))) is not None])
        for attr, label, style in _MARKS
    ]

    def draw(fig: Figure) -> None:
        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

        ax = fig.subplots()
        ax.plot(
            [t for t, _, _ in values],
            [v for _, v, _ in values],
            marker=".",
            lw=1,
            color="C0",
            label="value",
        )
        if len({v for _, v in thresholds}) == 1:  # one release: a line across the plot
            ax.axhline(thresholds[0][1], ls="--", color="C1", label="threshold")
        elif thresholds:  # held to the plot's end (a step stops at its last window)
            end = max([t for t, _ in thresholds] + [w for *_, ts in marks for w in ts])
            steps = [*thresholds, (end, thresholds[-1][1])]
            ax.step(*zip(*steps, strict=True), where="post", ls="--", color="C1", label="threshold")
        if bad:
            ax.scatter(
                *zip(*bad, strict=True),
                marker="x",
                s=40,
                color="C3",
                zorder=3,
                label="breaching window",
            )
        for label, (ls, color), times in marks:
            for k, when in enumerate(times):
                ax.axvline(when, ls=ls, lw=1.2, color=color, label=None if k else label)
        locator = AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        ax.set_xlabel("window end (UTC)")
        ax.set_ylabel(plain(signal))
        ax.legend(fontsize=7)

    return draw
