"""The evaluation report: one self-contained HTML page (no scripts, no network).

Plots are drawn with matplotlib's Agg canvas and embedded as base64 PNG data URIs, so the
page opens offline. Every string from the metrics, the history or the details is
HTML-escaped; a plot whose data is absent is replaced by a note saying so (the helpers
are shared with the monitor's report: :mod:`aegis.htmlreport`).
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from itertools import pairwise

from matplotlib.figure import Figure

from aegis.htmlreport import STYLE as _STYLE
from aegis.htmlreport import figure as _figure
from aegis.htmlreport import fmt as _fmt
from aegis.htmlreport import is_num as _is_num
from aegis.htmlreport import plain as _plain
from aegis.htmlreport import row as _row

_ATTACKS = [
    ("pgd", "our PGD"),
    ("apgd_ce", "APGD-CE"),
    ("apgd_t", "APGD-T"),
    ("square", "Square"),
    ("worst_case", "worst case (headline)"),
]


def history_panels(history: list[dict] | None) -> dict[str, list[str]]:
    """The training-curve panels: loss keys, accuracy keys, ε spent; timings are no curve."""
    rows = [h for h in history or [] if isinstance(h, dict)]
    keys = sorted({k for h in rows for k, v in h.items() if _is_num(v)}, key=str)
    panels = {
        "loss": [k for k in keys if str(k).endswith("loss")],
        "accuracy": [k for k in keys if str(k).endswith(("_acc", "accuracy"))],
        "ε spent": [k for k in keys if k == "epsilon"],
    }
    return {title: ks for title, ks in panels.items() if ks}


def _history_plot(history: list[dict] | None) -> Callable[[Figure], None] | None:
    """Loss and accuracy per epoch (and ε spent with DP), one panel each."""
    rows = [h for h in history or [] if isinstance(h, dict)]
    panels = history_panels(rows)
    if not panels:
        return None

    def draw(fig: Figure) -> None:
        from matplotlib.ticker import MaxNLocator

        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (title, panel_keys) in zip(axes, panels.items(), strict=True):
            for key in panel_keys:
                points = [
                    (h["epoch"] if _is_num(h.get("epoch")) else i + 1, h[key])
                    for i, h in enumerate(rows)
                    if _is_num(h.get(key))
                ]
                ax.plot(*zip(*points, strict=True), marker=".", label=_plain(key))
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
            ax.set_title(title, fontsize=9)
            if title == "accuracy":
                ax.set_ylim(0, 1.02)
            ax.legend(fontsize=7)

    return draw


def _robust_plot(metrics: dict) -> Callable[[Figure], None] | None:
    sweep = metrics.get("robust_sweep")
    if not isinstance(sweep, dict):
        return None
    points = []
    for eps, acc in sweep.items():
        try:
            points.append((float(eps), acc))
        except (TypeError, ValueError):
            continue
    points = sorted((e, a) for e, a in points if _is_num(a))
    if not points:
        return None
    robust = metrics.get("robust") if isinstance(metrics.get("robust"), dict) else {}

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        ax.plot(*zip(*points, strict=True), marker="o", label="our PGD")
        eps = robust.get("eps")
        if _is_num(eps):
            for i, (key, label) in enumerate(_ATTACKS[1:]):
                if _is_num(robust.get(key)):
                    ax.scatter(
                        [eps],
                        [robust[key]],
                        label=label,
                        color=f"C{i + 1}",
                        marker="sDv*"[i],
                        zorder=3,
                    )
        ax.set(xlabel="L-inf eps", ylabel="robust accuracy", ylim=(0, 1.02))
        ax.legend(fontsize=7)

    return draw


def _reliability_plot(details: dict) -> Callable[[Figure], None] | None:
    rel = details.get("reliability")
    if not isinstance(rel, dict) or not isinstance(rel.get("edges"), list):
        return None
    edges, acc = rel["edges"], rel.get("accuracy") or []
    if len(edges) != len(acc) + 1 or not all(_is_num(e) for e in edges):
        return None

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        lefts = edges[:-1]
        widths = [b - a for a, b in pairwise(edges)]
        heights = [a if _is_num(a) else 0.0 for a in acc]
        ax.bar(lefts, heights, width=widths, align="edge", edgecolor="k", label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        ece = rel.get("ece")
        ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
        ax.set_title(f"ECE {ece:.4f}" if _is_num(ece) else "", fontsize=9)
        ax.legend(fontsize=7)

    return draw


def _roc_plot(details: dict, metrics: dict) -> Callable[[Figure], None] | None:
    roc = details.get("mia_roc")
    if not isinstance(roc, dict):
        return None
    fpr, tpr = roc.get("fpr"), roc.get("tpr")
    if not isinstance(fpr, list) or not isinstance(tpr, list) or len(fpr) != len(tpr) or not fpr:
        return None
    mia = metrics.get("mia") if isinstance(metrics.get("mia"), dict) else {}

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        auc = mia.get("auc")
        ax.plot(fpr, tpr, label=f"loss threshold (AUC {auc:.3f})" if _is_num(auc) else "ROC")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="chance")
        ax.axvline(0.01, color="red", lw=0.8, label="1 % FPR")
        ax.set(xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=7)

    return draw


def _privacy_utility_plot(metrics: dict) -> Callable[[Figure], None] | None:
    eps, acc = metrics.get("epsilon_spent"), metrics.get("clean_acc")
    if not (_is_num(eps) and _is_num(acc)):
        return None

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        ax.scatter([eps], [acc], s=60, label=_plain(f"this model (delta={metrics.get('delta')})"))
        ax.set(xlabel="DP epsilon spent", ylabel="clean accuracy", ylim=(0, 1.02))
        ax.set_xlim(0, max(1.0, 1.2 * eps))
        ax.legend(fontsize=7)

    return draw


def _headline(metrics: dict) -> str:
    robust = metrics.get("robust") if isinstance(metrics.get("robust"), dict) else {}
    stderr = metrics.get("robust_stderr") if isinstance(metrics.get("robust_stderr"), dict) else {}
    mia = metrics.get("mia") if isinstance(metrics.get("mia"), dict) else {}
    rows = [
        _row(["metric", "value", "standard error"], header=True),
        _row(["clean accuracy", metrics.get("clean_acc"), ""]),
        _row(["worst-class gap", metrics.get("worst_class_gap"), ""]),
    ]
    rows += [
        _row(
            [
                f"robust accuracy, {label} (eps={_fmt(robust.get('eps'))})",
                robust.get(key),
                stderr.get(key),
            ]
        )
        for key, label in _ATTACKS
    ]
    rows += [
        _row(["expected calibration error", metrics.get("ece"), ""]),
        _row(
            [
                "DP epsilon spent (delta)",
                f"{_fmt(metrics.get('epsilon_spent'))} ({_fmt(metrics.get('delta'))})",
                "",
            ]
        ),
        _row(["membership inference AUC", mia.get("auc"), ""]),
        _row(["membership inference TPR at 1 % FPR", mia.get("tpr_at_1fpr"), ""]),
    ]
    detector = metrics.get("detector")
    if isinstance(detector, dict):  # the gateway's feature-squeezing detector
        d = {k: _fmt(detector.get(k)) for k in ("threshold", "calibration_rows", "calibrated_on")}
        label = (
            f"adversarial-input detector: clean test inputs flagged (threshold "
            f"{d['threshold']}, fitted on {d['calibration_rows']} {d['calibrated_on']} inputs)"
        )
        rows.append(_row([label, detector.get("test_fpr"), ""]))
    samples = metrics.get("samples")
    if isinstance(samples, dict):
        rows += [_row([f"samples: {k}", v, ""]) for k, v in samples.items()]
    return "<table>" + "".join(rows) + "</table>"


def _flags(metrics: dict) -> str:
    flags = metrics.get("flags") or []
    reasons = metrics.get("flag_reasons") if isinstance(metrics.get("flag_reasons"), dict) else {}
    if not flags:
        return "<p class='ok'>No flags: the independent attacks agree with our PGD.</p>"
    items = "".join(
        f"<li><b>{escape(str(code))}</b>: {escape(str(reasons.get(code, '')))}</li>"
        for code in flags
    )
    return f"<ul class='bad'>{items}</ul>"


def _timings(details: dict) -> str:
    seconds = details.get("attack_seconds")
    if not isinstance(seconds, dict):
        return ""
    samples = (
        details.get("attack_samples") if isinstance(details.get("attack_samples"), dict) else {}
    )
    rows = [_row(["attack", "samples", "seconds"], header=True)]
    rows += [
        _row([name, samples.get(name, ""), s])
        for name, s in seconds.items()
        if not isinstance(s, dict)
    ]
    skipped = (
        details.get("skipped_attacks") if isinstance(details.get("skipped_attacks"), dict) else {}
    )
    rows += [_row([name, "skipped", why]) for name, why in skipped.items()]
    return "<h2>Attack runs</h2><table>" + "".join(rows) + "</table>"


def render_report(
    metrics: dict,
    *,
    history: list[dict] | None = None,
    details: dict | None = None,
    title: str = "Model evaluation",
) -> str:
    """Renders the evaluation as one self-contained HTML page.

    Args:
        metrics: ``EvaluationResult.to_metrics()`` (or the same shape read from JSON).
        history: Per-epoch training records, e.g. ``{"epoch": 1, "train_loss": ...}``;
            every numeric key is plotted against ``epoch``.
        details: ``EvaluationResult.details()``: reliability and ROC curves, run times.
        title: Page heading (escaped).

    Returns:
        The HTML page (no scripts, no external resources).
    """
    details = details or {}
    plots = [
        _figure("Training curves", _history_plot(history), "no training history"),
        _figure("Robust accuracy vs eps", _robust_plot(metrics), "no robustness sweep"),
        _figure("Reliability diagram", _reliability_plot(details), "no calibration data"),
        _figure("Membership inference ROC", _roc_plot(details, metrics), "audit not run"),
        _figure(
            "Privacy-utility point", _privacy_utility_plot(metrics), "model not trained with DP"
        ),
    ]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        "<h2>Headline figures</h2>",
        _headline(metrics),
        "<h2>Flags</h2>",
        _flags(metrics),
        "<h2>Plots</h2>",
        *plots,
        _timings(details),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
