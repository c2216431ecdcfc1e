"""The watermark's choice: keyed, deterministic, about the configured share, always wrong."""

from __future__ import annotations

import numpy as np

from aegis.serve.watermark import Watermarker, input_sha256, records, served_answers


def test_marks_are_deterministic_keyed_and_about_the_rate():
    rows = np.random.default_rng(0).random((20000, 8))
    labels = np.random.default_rng(1).integers(0, 10, len(rows))
    marker = Watermarker(b"k" * 32, rate=0.01, classes=10)
    first = marker.mark(rows, labels)
    again = marker.mark(rows, labels)
    assert (first.rows == again.rows).all() and (first.labels == again.labels).all()
    assert 0.007 < len(first.rows) / len(rows) < 0.013
    assert (first.labels != labels[first.rows]).all()
    other = Watermarker(b"x" * 32, rate=0.01, classes=10).mark(rows, labels)
    assert len(set(first.rows.tolist()) & set(other.rows.tolist())) < len(first.rows) // 4
    assert Watermarker(b"k" * 32, rate=0.0, classes=10).mark(rows, labels) is None


def test_served_answers_swap_the_top_two_and_records_hold_the_evidence():
    rows = np.random.default_rng(0).random((4000, 4))
    probs = np.random.default_rng(1).dirichlet(np.ones(3), len(rows)).astype(np.float32)
    labels = probs.argmax(1)
    marks = Watermarker(b"k" * 32, rate=0.05, classes=3).mark(rows, labels)
    served, served_probs = served_answers(labels, probs, marks)
    assert (served[marks.rows] == marks.labels).all()
    assert (served_probs.argmax(1) == served).all()
    assert np.allclose(np.sort(served_probs, 1), np.sort(probs, 1))
    kept = np.setdiff1d(np.arange(len(rows)), marks.rows)
    assert (served[kept] == labels[kept]).all()
    out = records(rows, labels, marks, client="c1")
    assert out[0]["input_sha256"] == input_sha256(np.asarray(out[0]["input"]))
    assert out[0]["served"] != out[0]["label"] and out[0]["client"] == "c1"
