"""Traffic for monitor tests: the release's own test split, answered by a real gateway."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from serve_helpers import MODEL, ask, in_process_gateway


def clean_rows(served) -> np.ndarray:
    """The release's own test split (what its reference was fitted on: clean traffic)."""
    from aegis.train.data import rebuild_split

    release = served.root / "releases" / MODEL / "v1"
    config = json.loads((release / "model" / "config.json").read_text())
    frame = pd.read_parquet(next(served.env.raw.glob("*.parquet")))
    split = rebuild_split(frame, config["split"])
    return frame.drop(columns=["label"]).to_numpy(np.float64)[split.test]


def serve_rows(served, rows: np.ndarray, *, batch: int = 25, segment: bool = False,
               clients: tuple[str, ...] = ("app",)) -> list[str]:  # fmt: skip
    """Answers ``rows`` in requests of ``batch`` (the clients in turn); ``segment``: one log
    segment per request. Returns the request ids."""
    gw = in_process_gateway(served)
    ids = []
    try:
        for i, start in enumerate(range(0, len(rows), batch)):
            token = served.tokens[clients[i % len(clients)]]
            ids.append(ask(gw, token, rows[start : start + batch])["request"])
            if segment:
                gw.predlog.flush()
    finally:
        gw.close()  # writes the buffered rows: a signed segment
    return ids
