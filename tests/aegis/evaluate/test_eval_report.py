"""The HTML report: self-contained, escaped, plots skipped with a note when data is absent."""

from __future__ import annotations

import base64
import re

import pytest

from aegis.evaluate.report import render_report

_DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")
HOSTILE = "<script>alert('x')</script>"


def _metrics(**changes) -> dict:
    metrics = {
        "clean_acc": 0.98,
        "per_class_acc": [0.97] * 10,
        "worst_class_gap": 0.03,
        "robust": {
            "eps": 0.1,
            "clean": 0.98,
            "pgd": 0.8,
            "apgd_ce": 0.78,
            "apgd_t": 0.79,
            "square": 0.85,
            "worst_case": 0.77,
        },
        "robust_stderr": {
            "pgd": 0.02,
            "apgd_ce": 0.02,
            "apgd_t": 0.02,
            "square": 0.04,
            "worst_case": 0.02,
        },
        "robust_sweep": {"0.05": 0.9, "0.1": 0.8, "0.2": 0.3},
        "ece": 0.02,
        "epsilon_spent": 2.9,
        "delta": 1e-5,
        "mia": {"auc": 0.52, "tpr_at_1fpr": 0.02},
        "flags": [],
        "flag_reasons": {},
        "samples": {"test": 450, "attacked": 300},
    }
    metrics.update(changes)
    return metrics


DETAILS = {
    "reliability": {
        "ece": 0.02,
        "edges": [0.0, 0.5, 1.0],
        "confidence": [None, 0.9],
        "accuracy": [None, 0.88],
        "count": [0, 10],
    },
    "mia_roc": {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 0.6, 1.0]},
    "attack_seconds": {"pgd": 0.2, "apgd-ce": 2.0, "pgd_sweep": {"0.1": 0.2}},
    "attack_samples": {"pgd": 300, "apgd-ce": 300},
    "skipped_attacks": {"apgd-t": "needs at least 3 classes"},
}
HISTORY = [{"epoch": e, "train_loss": 1 / e, "val_acc": 0.5 + e / 20} for e in range(1, 6)]


def _assert_self_contained(html: str) -> None:
    assert "<script" not in html.lower()
    stripped = _DATA_URI.sub("", html)
    assert "http" not in stripped.lower() and "href" not in stripped.lower()
    assert not re.search(r"src=['\"](?!data:image/png;base64,)", html)


def test_full_report_embeds_every_plot():
    html = render_report(_metrics(), history=HISTORY, details=DETAILS)
    _assert_self_contained(html)
    images = _DATA_URI.findall(html)
    assert len(images) == 5
    assert all(base64.b64decode(img).startswith(b"\x89PNG\r\n\x1a\n") for img in images)
    assert "Not shown" not in html
    assert "No flags" in html and "needs at least 3 classes" in html


def test_missing_data_is_noted_not_plotted():
    html = render_report(
        _metrics(epsilon_spent=None, delta=None, robust_sweep=None), history=None, details=None
    )
    _assert_self_contained(html)
    assert _DATA_URI.findall(html) == []
    for missing in (
        "no training history",
        "no robustness sweep",
        "no calibration data",
        "audit not run",
        "model not trained with DP",
    ):
        assert f"Not shown: {missing}." in html


def test_hostile_strings_are_escaped():
    metrics = _metrics(
        flags=[HOSTILE],
        flag_reasons={HOSTILE: "<img src=x onerror=alert(1)> http://evil.example"},
        samples={HOSTILE: 1},
        delta="$\\frac{a}{$",
    )
    history = [{"epoch": 1, "$\\bad{" + HOSTILE + "_loss": 0.5, "note": HOSTILE}]
    html = render_report(metrics, history=history, details=DETAILS, title=HOSTILE)
    assert "<script" not in html.lower() and "<img src=x" not in html
    assert "&lt;script&gt;" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert len(_DATA_URI.findall(html)) == 5  # mathtext-like keys do not break the plots


@pytest.mark.slow
def test_report_of_a_real_evaluation(masked_eval):
    html = render_report(
        masked_eval.to_metrics(), history=HISTORY, details=masked_eval.details(), title="digits"
    )
    _assert_self_contained(html)
    assert "square_beats_pgd" in html and "vanishing_gradients" in html
    assert len(_DATA_URI.findall(html)) == 4  # no DP: no privacy-utility point


def test_training_curves_plot_loss_and_accuracy_never_seconds():
    from aegis.evaluate.report import history_panels

    history = [
        {"epoch": 1, "train_loss": 1.2, "val_loss": 1.3, "train_acc": 0.6, "val_acc": 0.55,
         "seconds": 4.2},
        {"epoch": 2, "train_loss": 0.8, "val_loss": 0.9, "train_acc": 0.8, "val_acc": 0.75,
         "seconds": 3.9, "epsilon": 1.1},
    ]  # fmt: skip
    assert history_panels(history) == {
        "loss": ["train_loss", "val_loss"],
        "accuracy": ["train_acc", "val_acc"],
        "ε spent": ["epsilon"],
    }
    assert history_panels([{"epoch": 1, "seconds": 2.0}]) == {}
