"""Labelled feedback over the API: ``POST /v1/feedback``, signed into ``log/feedback.jsonl``.

A client sends ``{"request": ID, "labels": [3, null, 7]}``: the true label (or
``null``, unknown) of each row of a request it was answered (the ``request`` its
response named). The gateway checks the shape, counts one row against the client's
limits, and appends a line ``{request, labels, client, time}`` signed with its serving
key (rotated to ``feedback.jsonl.1`` past :data:`FEEDBACK_CAP`).

It does not look the request up (another worker may have answered it, or an earlier
process): the monitor joins a line only to rows of that request that were answered to
the same key, which the prediction log names per row. So a key can label only its own
answers, and feedback sent by one key weighs as that key's rows do in the one-key rule.
The format checks are shared with the operator's feedback file
(:mod:`aegis.monitor.feedback`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from aegis.crypto.documents import sign_document
from aegis.timeutil import utc_now

FEEDBACK_KIND = "aegis-serve-feedback/1"
FEEDBACK_CAP = 32 * 1024 * 1024  # then feedback.jsonl becomes feedback.jsonl.1
MAX_ROWS = 100_000  # labels in one request (the gateway's batch cap is far below)
MAX_LABEL = 1_000_000  # a class index; larger is not a label (and would overflow int64)
REQUEST_ID = re.compile(r"[0-9a-f]{1,16}-[0-9]{1,20}")  # what the gateway hands out

# one shape rule for both sources; the message names the field, the caller the place
SHAPE = '{"request": ID, "labels": [...]}'
LABELS = "a request id and a list of labels (non-negative integers or null)"


def feedback_item(item: Any) -> tuple[str, list[int | None]] | None:
    """``(request, labels)`` of one feedback item, or None when it is not that shape."""
    if not isinstance(item, dict) or set(item) - {"request", "labels"}:
        return None
    request, labels = item.get("request"), item.get("labels")
    if not isinstance(request, str) or not 0 < len(request) <= 200:
        return None
    if not isinstance(labels, list) or len(labels) > MAX_ROWS:
        return None
    for v in labels:
        if v is not None and (
            not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_LABEL
        ):
            return None
    return request, labels


def parse_feedback(text: bytes | str) -> tuple[str, list[int | None]]:
    """``(request, labels)`` of one JSON feedback item (a body, or a file's line).

    Raises:
        ValueError: Naming what is wrong with it.
    """
    try:
        item = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError(f"not JSON; send {SHAPE}") from None
    parsed = feedback_item(item)
    if parsed is None:
        raise ValueError(f"send {SHAPE}: {LABELS}")
    return parsed


def feedback_document(key, body: bytes, *, client_id: str, max_rows: int) -> dict[str, Any]:
    """The signed line for a ``POST /v1/feedback`` body.

    Raises:
        ValueError: Naming what is wrong with the body (the gateway answers 422).
    """
    request, labels = parse_feedback(body)
    if not REQUEST_ID.fullmatch(request):
        raise ValueError(f"request {request[:40]!r} is not an id this gateway hands out")
    if not 0 < len(labels) <= max_rows:
        raise ValueError(f"labels: 1 to {max_rows} per request (serve.max_batch)")
    body_doc = {"kind": FEEDBACK_KIND, "time": utc_now(), "client": client_id,
                "request": request, "labels": labels}  # fmt: skip
    return sign_document(key, body_doc)
