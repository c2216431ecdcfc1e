"""Helpers of Aegis's self-contained HTML reports (the evaluation's, the monitor's).

A report is one page with no scripts and no network: plots are drawn with matplotlib's
Agg canvas and embedded as base64 PNG data URIs, every string is HTML-escaped, and a
plot whose data is absent is replaced by a note saying so.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable
from html import escape
from typing import Any

# The Figure/canvas API, not pyplot: no global backend switch, no GUI, safe in threads.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:70rem}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}
td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;font-size:.9rem}
th{background:#f3f3f3}.ok{color:#11772d}.bad{color:#b00020;font-weight:600}
.note{color:#666;font-style:italic}figure{display:inline-block;margin:0 1rem 1rem 0}
"""

FIGSIZE = (5.2, 3.6)  # inches at 100 dpi


def is_num(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def fmt(value: Any) -> str:
    """A table cell's text: ``n/a`` for None, four significant digits for a float."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def row(cells: list[Any], header: bool = False) -> str:
    """One table row of escaped cells."""
    tag = "th" if header else "td"
    return "<tr>" + "".join(f"<{tag}>{escape(fmt(c))}</{tag}>" for c in cells) + "</tr>"


def plain(text: Any) -> str:
    """Text for matplotlib: ``$`` would start mathtext, which can fail on hostile input."""
    return str(text).replace("$", r"\$")


def png(draw: Callable[[Figure], None], size: tuple[float, float] = FIGSIZE) -> str:
    """The base64 PNG of a figure of ``size`` inches that ``draw`` fills."""
    fig = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    draw(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def figure(
    title: str,
    draw: Callable[[Figure], None] | None,
    missing: str,
    size: tuple[float, float] = FIGSIZE,
) -> str:
    """A captioned plot, or when ``draw`` is None a note that it is not shown and why."""
    if draw is None:
        return f"<h3>{escape(title)}</h3><p class='note'>Not shown: {escape(missing)}.</p>"
    return (
        f"<figure><figcaption><b>{escape(title)}</b></figcaption>"
        f"<img alt='{escape(title, quote=True)}' src='data:image/png;base64,{png(draw, size)}'>"
        "</figure>"
    )
