"""Labelled feedback: the true labels that came back for answered requests.

A feedback file is JSON lines, one per request the gateway answered (its response's
``request`` id): ``{"request": "1f2a-17", "labels": [3, null, 7]}``, a true label (or
``null``: unknown) per row of that request, in order. The monitor joins them to the
prediction log's rows and tests the labelled rows' errors (``feedback_accuracy``).
Clients can send the same over the API (:mod:`aegis.serve.feedback`); every pass
reads those too (:func:`served_feedback`).

Feedback is evidence the caller supplies, not the gateway, so it is checked strictly
(a malformed file is refused whole, naming its line): whoever can feed labels can move
a version to ``suspect``, never to ``bad``. A label the model has no class for counts as
an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aegis.errors import RefusedError, UnsafeFileError, UsageError
from aegis.fileutil import read_optional, read_regular
from aegis.ledger import Ledger
from aegis.serve.feedback import FEEDBACK_KIND, feedback_item, parse_feedback
from aegis.serve.records import READ_CAP, feedback_path, verified_record

LIMIT = 256 << 20


@dataclass(frozen=True)
class Feedback:
    """The true labels of one answered request's rows (None: unknown)."""

    labels: list[int | None]
    client: str | None  # the key that sent it over the API: it labels only its own rows


# (request id, the key that sent it over the API, or None: the operator's file)
Labels = dict[tuple[str, str | None], Feedback]


def read_feedback(path: Path) -> Labels:
    """``{(request id, None): Feedback}`` from an operator's feedback file (any key's rows).

    Raises:
        UsageError: Not a regular file, not JSON lines of that shape, a request twice.
    """
    try:
        raw = read_regular(path, limit=LIMIT, what=path.name)
    except FileNotFoundError:
        raise UsageError(f"--feedback {path}: no such file") from None
    except UnsafeFileError as exc:
        raise UsageError(f"--feedback {path}: {exc.detail}") from None
    out: Labels = {}
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            request, labels = parse_feedback(line)
        except ValueError as exc:
            raise UsageError(f"--feedback {path.name} line {number}: {exc}") from None
        if (request, None) in out:
            raise UsageError(f"--feedback {path.name} line {number}: request {request!r} twice")
        out[request, None] = Feedback(labels, None)
    return out


def served_feedback(ledger: Ledger) -> tuple[Labels, int]:
    """What clients sent to ``POST /v1/feedback``, and how many lines were skipped.

    Every complete line of ``feedback.jsonl`` (and its rotated ``.1``) that a serving key
    in good standing signed counts, keyed by request and sender; a sender's first line
    for a request wins (it cannot relabel its answers later, and another key's line,
    sent first, takes nothing from it). A line that does not verify (edited, forged, or
    signed by a key revoked since) is skipped and counted, not fatal: whoever can write
    the file could otherwise stop every signal's monitoring by appending a bad line.

    Raises:
        RefusedError: ``feedback``: the file is not a regular file (a planted link).
    """
    path = feedback_path(ledger.ws)
    out: Labels = {}
    skipped = 0
    for source in (path.with_name(path.name + ".1"), path):
        try:
            raw = read_optional(source, limit=READ_CAP, what=source.name) or b""
        except UnsafeFileError as exc:
            raise RefusedError("feedback", f"{source.name}: {exc.detail}") from None
        # complete lines only: the gateway may be writing the last one
        for line in raw.decode("utf-8", "replace").split("\n")[:-1]:
            document = verified_record(line, FEEDBACK_KIND, ledger)
            body = {} if document is None else document["body"]
            parsed = feedback_item({"request": body.get("request"), "labels": body.get("labels")})
            client = body.get("client")
            if parsed is None or not isinstance(client, str):
                skipped += 1
                continue
            out.setdefault((parsed[0], client), Feedback(parsed[1], client))
    return out, skipped


def truth_of(feedback: Labels, rows: np.ndarray, clients: np.ndarray) -> np.ndarray:
    """The true label of each ``"request#row"`` key in ``rows``, from the operator's file
    or else from the key the row was answered to (-1 where none came back)."""
    out = np.full(len(rows), -1, dtype=np.int64)
    for i, key in enumerate(rows):
        request, _, row = str(key).rpartition("#")
        item = feedback.get((request, None)) or feedback.get((request, str(clients[i])))
        if item is None:
            continue
        if row.isdigit() and int(row) < len(item.labels):
            label = item.labels[int(row)]
            out[i] = -1 if label is None else label
    return out
