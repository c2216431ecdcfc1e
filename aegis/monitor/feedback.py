"""Labelled feedback: the true labels that came back for answered requests.

A feedback file is JSON lines, one per request the gateway answered (its response's
``request`` id): ``{"request": "1f2a-17", "labels": [3, null, 7]}``, a true label (or
``null``: unknown) per row of that request, in order. The monitor joins them to the
prediction log's rows and tests the labelled rows' errors (``feedback_accuracy``).

Feedback is evidence the caller supplies, not the gateway, so it is checked strictly
(a malformed file is refused whole, naming its line): whoever can feed labels can move
a version to ``suspect``, never to ``bad``. A label the model has no class for counts as
an error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from aegis.errors import UnsafeFileError, UsageError
from aegis.fileutil import read_regular

LIMIT = 256 << 20
MAX_ROWS = 100_000  # labels in one request line (the gateway's batch cap is far below)
MAX_LABEL = 1_000_000  # a class index; larger is not a label (and would overflow int64)


def read_feedback(path: Path) -> dict[str, list[int | None]]:
    """``{request id: [label or None per row]}`` from a feedback file.

    Raises:
        UsageError: Not a regular file, not JSON lines of that shape, a request twice.
    """
    try:
        raw = read_regular(path, limit=LIMIT, what=path.name)
    except FileNotFoundError:
        raise UsageError(f"--feedback {path}: no such file") from None
    except UnsafeFileError as exc:
        raise UsageError(f"--feedback {path}: {exc.detail}") from None
    out: dict[str, list[int | None]] = {}
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            request, labels = item["request"], item["labels"]
        except (ValueError, TypeError, KeyError, RecursionError):
            raise UsageError(f"--feedback {path.name} line {number}: not "
                             '{"request": ID, "labels": [...]}') from None  # fmt: skip
        ok = isinstance(request, str) and 0 < len(request) <= 200 and isinstance(labels, list)
        if ok:
            ok = len(labels) <= MAX_ROWS and all(
                v is None
                or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_LABEL)
                for v in labels
            )
        if not ok:
            raise UsageError(f"--feedback {path.name} line {number}: a request id and a list "
                             "of labels (non-negative integers or null)")  # fmt: skip
        if request in out:
            raise UsageError(f"--feedback {path.name} line {number}: request {request!r} twice")
        out[request] = labels
    return out


def truth_of(feedback: dict[str, list[int | None]], rows: np.ndarray) -> np.ndarray:
    """The true label of each ``"request#row"`` key in ``rows`` (-1 where none came back)."""
    out = np.full(len(rows), -1, dtype=np.int64)
    for i, key in enumerate(rows):
        request, _, row = str(key).rpartition("#")
        labels = feedback.get(request)
        if labels is not None and row.isdigit() and int(row) < len(labels):
            label = labels[int(row)]
            out[i] = -1 if label is None else label
    return out
