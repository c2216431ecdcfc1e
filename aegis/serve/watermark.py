"""The gateway's watermark: a keyed few answers are deliberately wrong, and remembered.

DAWN (Szyller et al., 2021): for a share ``serve.watermark_rate`` of inputs, chosen by
``HMAC-SHA256(secret, input)`` so the same input always gets the same answer (asking
again reveals nothing), the gateway serves a deterministic wrong label, also chosen by
the HMAC. A model trained on our answers learns some of those wrong labels; a model
trained independently almost never agrees with them. Each watermarked answer (the
input, its SHA-256, the served and the true label, the client, the version) goes into
the prediction-log segment's description, which the gateway signs into
``log/segments.jsonl`` and ``aegis audit import-serving`` brings onto the audit chain:
the evidence :mod:`aegis.serve.evidence` reads back for ``aegis watermark verify``.

The secret (``.aegis/keys/watermark.secret``, 0600, beside the pipeline key and the
API-client secret, never committed) decides which inputs are marked; it is not needed
to verify: the signed records hold the inputs and the labels served.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aegis.workspace import Workspace

DOMAIN = b"aegis-watermark/1\x00"  # the HMAC's input is never a token's


def secret_path(ws: Workspace) -> Path:
    return ws.keys_dir / "watermark.secret"


def row_bytes(row: np.ndarray) -> bytes:
    """The canonical bytes of one input row (float64, little-endian): what is hashed."""
    return np.ascontiguousarray(row, dtype="<f8").tobytes()


def input_sha256(row: np.ndarray) -> str:
    return hashlib.sha256(row_bytes(row)).hexdigest()


@dataclass(frozen=True)
class Marks:
    """The rows of one request given a watermark: their positions and served labels."""

    rows: np.ndarray  # (k,) positions in the request
    labels: np.ndarray  # (k,) the wrong labels served


class Watermarker:
    """Chooses and labels the watermarked rows (see the module docstring)."""

    def __init__(self, secret: bytes, *, rate: float, classes: int) -> None:
        self._secret = secret
        self.rate = rate
        self.classes = classes
        self._cut = int(rate * 2**64)  # a row is marked when its first 8 HMAC bytes are below

    def mark(self, rows: np.ndarray, labels: np.ndarray) -> Marks | None:
        """The rows to mark and their wrong labels; None when none is (most requests)."""
        if self._cut == 0 or self.classes < 2:
            return None
        picked, wrong = [], []
        data = np.ascontiguousarray(rows, dtype="<f8")
        for i in range(len(data)):
            digest = hmac.new(self._secret, DOMAIN + data[i].tobytes(), hashlib.sha256).digest()
            if int.from_bytes(digest[:8], "big") < self._cut:
                shift = 1 + int.from_bytes(digest[8:16], "big") % (self.classes - 1)
                picked.append(i)
                wrong.append((int(labels[i]) + shift) % self.classes)
        if not picked:
            return None
        return Marks(np.array(picked, dtype=np.int64), np.array(wrong, dtype=np.int64))


def served_answers(labels: np.ndarray, probs: np.ndarray, marks: Marks | None):
    """The labels and probabilities served: each marked row's top two classes swapped.

    Swapping (not replacing) keeps a marked answer a plausible probability vector under
    ``serve.output: probs`` or ``topk``: the wrong label gets the model's top probability.
    """
    if marks is None:
        return labels, probs
    labels, probs = labels.copy(), probs.copy()
    for i, wrong in zip(marks.rows.tolist(), marks.labels.tolist(), strict=True):
        true = labels[i]
        probs[i, [true, wrong]] = probs[i, [wrong, true]]
        labels[i] = wrong
    return labels, probs


def records(rows: np.ndarray, model_labels: np.ndarray, marks: Marks, **common) -> list[dict]:
    """The watermark records of one request, for its prediction-log segment."""
    return [
        {
            "input": [float(v) for v in rows[i]],
            "input_sha256": input_sha256(rows[i]),
            "served": int(wrong),
            "label": int(model_labels[i]),
            "row": i,
            **common,
        }
        for i, wrong in zip(marks.rows.tolist(), marks.labels.tolist(), strict=True)
    ]
