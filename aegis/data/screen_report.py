"""The poisoning screens' part of the validation report: counts, scores, flagged images.

Per screen: how many rows it flagged, its threshold and run time (or why it was
skipped); per class, the rows and flags of each screen; the highest-scoring
flagged rows; and, for image datasets, the flagged rows drawn as small inline
SVG images (no scripts, no network), with their row id, label and reasons.
"""

from __future__ import annotations

from html import escape
from typing import Any

from aegis.screens.table import LABEL, feature_columns, image_side

MAX_IMAGES = 48
TOP_SCORES = 20
_CELL = 5  # pixels per image cell


def _svg(values, side: int) -> str:
    top = max(float(max(values)), 1e-12)
    cells = []
    for i, v in enumerate(values):
        shade = 255 - int(255 * max(float(v), 0.0) / top)  # ink is dark, as digits are drawn
        r, c = divmod(i, side)
        cells.append(f"<rect x='{c * _CELL}' y='{r * _CELL}' width='{_CELL}' height='{_CELL}' "
                     f"fill='rgb({shade},{shade},{shade})'/>")  # fmt: skip
    size = side * _CELL
    head = f"<svg width='{size}' height='{size}' xmlns='http://www.w3.org/2000/svg'>"
    return head + "".join(cells) + "</svg>"


def _images(quarantine, screens: list[str]) -> str:
    from aegis.data.quarantine import REASONS, ROW

    features = [c for c in feature_columns(quarantine) if c not in (ROW, REASONS)]
    side = image_side(features)
    if side is None:
        return ""
    ordered = [f"pixel_{r}_{c}" for r in range(side) for c in range(side)]
    by_screen = quarantine[REASONS].map(lambda t: any(s in t.split("; ") for s in screens))
    flagged = quarantine[by_screen]
    if not len(flagged):
        return ""
    out = [f"<h3>Flagged rows as images (first {min(len(flagged), MAX_IMAGES)} of "
           f"{len(flagged)})</h3><div style='display:flex;flex-wrap:wrap;gap:.6rem'>"]  # fmt: skip
    for _, row in flagged.head(MAX_IMAGES).iterrows():
        label = row.get(LABEL, "?")
        out.append(
            "<figure style='margin:0;text-align:center;font-size:.75rem'>"
            f"{_svg(row[ordered].to_numpy(dtype=float), side)}<figcaption>row {int(row[ROW])}"
            f"<br>label {escape(str(label))}<br>{escape(str(row[REASONS]))}</figcaption></figure>"
        )
    out.append("</div>")
    return "\n".join(out)


def _cell(text: Any) -> str:
    return f"<td>{escape(str(text))}</td>"


def screens_section(screens: dict[str, Any], quarantine) -> str:
    """The HTML of the screens (``ValidationResult.screens``) and their flagged rows."""
    enabled = list(screens.get("enabled") or [])
    if not enabled:
        return "<h2>Poisoning screens</h2><p>No screen is enabled (screen.enabled).</p>"
    out = [
        "<h2>Poisoning screens</h2>",
        f"<p>{screens.get('flagged', 0)} row(s) flagged ({screens.get('fraction', 0.0):.2%}; "
        f"the run stops above screen.max_flagged_fraction {screens.get('max_fraction', 0):.0%})."
        "</p><table><tr><th>screen</th><th>flagged</th><th>threshold</th><th>seconds</th>"
        "<th>note</th></tr>",
    ]
    for name in enabled:
        if name in screens:
            s = screens[name]
            out.append(f"<tr>{_cell(name)}{_cell(s['flagged'])}{_cell(s.get('threshold'))}"
                       f"{_cell(s.get('seconds'))}<td></td></tr>")  # fmt: skip
        else:
            why = (screens.get("skipped") or {}).get(name, "")
            out.append(f"<tr>{_cell(name)}<td>-</td><td>-</td><td>-</td>{_cell('skipped: ' + why)}"
                       "</tr>")  # fmt: skip
    out.append("</table>")
    ran = [n for n in enabled if n in screens]
    classes = sorted({k for n in ran for k in screens[n].get("per_class", {})}, key=int)
    if ran and classes:
        out.append("<h3>Per class</h3><table><tr><th>class</th><th>rows</th>"
                   + "".join(f"<th>{escape(n)}</th>" for n in ran) + "</tr>")  # fmt: skip
        for k in classes:
            first = screens[ran[0]]["per_class"].get(k, {})
            counts = "".join(_cell(screens[n]["per_class"].get(k, {}).get("flagged", 0))
                             for n in ran)  # fmt: skip
            out.append(f"<tr>{_cell(k)}{_cell(first.get('rows', ''))}{counts}</tr>")
        out.append("</table>")
    for name in ran:
        pairs = sorted(zip(screens[name]["rows"], screens[name]["scores"], strict=True),
                       key=lambda p: -p[1])[:TOP_SCORES]  # fmt: skip
        if pairs:
            body = "".join(f"<tr>{_cell(r)}{_cell(f'{s:.4f}')}</tr>" for r, s in pairs)
            out.append(f"<h3>Highest scores: {escape(name)}</h3><table><tr><th>row</th>"
                       f"<th>score</th></tr>{body}</table>")  # fmt: skip
    out.append(_images(quarantine, ran))
    return "\n".join(out)
