"""The prediction log the monitor reads: one row per answered input, in Parquet segments.

Requests append rows to an in-memory buffer (a lock and a list: nothing slow on the
request path); a flusher thread writes a segment when ``serve.log_segment_rows`` rows
are waiting or the oldest is ``serve.log_flush_s`` old, and at shutdown. A segment is
written to a temporary name, fsynced, then renamed: a crash loses at most the buffered
rows, never a written segment. Each segment is signed into ``segments.jsonl``
(:class:`aegis.serve.records.Recorder`). The directory is capped at
``serve.max_store_bytes``: the oldest segments go first.

Never logged: the token. ``serve.log_inputs``: ``full`` keeps the rows, ``summary`` a
SHA-256 of each row and its mean, minimum and maximum, ``none`` nothing of the input.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("aegis.serve")


class PredictionLog:
    """Buffered, segment-rotating Parquet writer for one process."""

    def __init__(self, directory: Path, *, params, on_segment=None, name: str = "pred") -> None:
        self.directory = directory
        self.params = params  # ServeParams of the served release (log_* and the cap)
        self.on_segment = on_segment  # called with each written segment's description
        self._name = f"{name}-{os.getpid()}"
        self._rows: list[dict[str, Any]] = []
        self._oldest = 0.0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._count = 0
        self.written = 0  # rows in written segments (the metrics read it)
        self.dropped = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="aegis-predlog", daemon=True)
        self._thread.start()

    def append(
        self, *, client: str, request: str, version: str, digest: str, rows: np.ndarray,
        prediction, latency_ms: float,
    ) -> None:  # fmt: skip
        """Buffers one request's rows (called on the request path: no I/O here)."""
        now = time.time()
        mode = self.params.log_inputs
        records = []
        scores = prediction.scores
        for i in range(len(rows)):
            record: dict[str, Any] = {
                "time": now, "request": request, "client": client, "version": version,
                "model_digest": digest, "label": int(prediction.labels[i]),
                "probs": prediction.probs[i].tolist(),
                "flagged": bool(prediction.flagged[i]),
                "score": float(scores[i]) if scores is not None else None,
                "latency_ms": latency_ms,
            }  # fmt: skip
            if mode == "full":
                record["inputs"] = rows[i].tolist()
            elif mode == "summary":
                row = np.ascontiguousarray(rows[i], dtype=np.float64)
                record["input_sha256"] = hashlib.sha256(row.tobytes()).hexdigest()
                record["input_mean"] = float(row.mean())
                record["input_min"] = float(row.min())
                record["input_max"] = float(row.max())
            records.append(record)
        with self._lock:
            if not self._rows:
                self._oldest = now
            # a flusher that cannot write must not grow memory without bound
            room = 4 * self.params.log_segment_rows - len(self._rows)
            if room < len(records):
                self.dropped += len(records) - max(room, 0)
                records = records[: max(room, 0)]
            self._rows.extend(records)
            if len(self._rows) >= self.params.log_segment_rows:
                self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=min(self.params.log_flush_s, 1.0))
            self._wake.clear()
            with self._lock:
                due = self._rows and (
                    len(self._rows) >= self.params.log_segment_rows
                    or time.time() - self._oldest >= self.params.log_flush_s
                )
            if due:
                self.flush()

    def flush(self) -> Path | None:
        """Writes the buffered rows as one segment (None when there were none)."""
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return None
        try:
            return self._write(rows)
        except OSError as exc:
            self.dropped += len(rows)
            log.error("prediction log: cannot write a segment (%s); %d rows lost", exc, len(rows))
            return None

    def _write(self, rows: list[dict[str, Any]]) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._count += 1
        first = datetime.fromtimestamp(rows[0]["time"], UTC)
        stamp = first.strftime("%Y%m%dT%H%M%S")
        path = self.directory / f"{self._name}-{stamp}-{self._count:06d}.parquet"
        tmp = path.with_name("." + path.name + ".tmp")
        columns = {key: [r.get(key) for r in rows] for key in rows[0]}
        columns["time"] = [datetime.fromtimestamp(t, UTC) for t in columns["time"]]
        table = pa.table(columns)
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        os.replace(tmp, path)
        self.written += len(rows)
        if self.on_segment is not None:
            self.on_segment({
                "file": path.name, "sha256": digest, "rows": len(rows),
                "first": first.isoformat(), "last": columns["time"][-1].isoformat(),
                "versions": sorted({r["version"] for r in rows}),
            })  # fmt: skip
        self._enforce_cap()
        return path

    def _enforce_cap(self) -> None:
        segments = sorted(self.directory.glob("*.parquet"), key=lambda p: p.stat().st_mtime_ns)
        total = sum(p.stat().st_size for p in segments)
        while segments and total > self.params.max_store_bytes:
            oldest = segments.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink(missing_ok=True)

    def close(self) -> None:
        """Stops the flusher and writes what is buffered."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self.flush()


def read_log(directory: Path):
    """Every written segment as one pandas frame (for the monitor, tests and benchmarks)."""
    import pandas as pd

    segments = sorted(directory.glob("*.parquet"))
    if not segments:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(p) for p in segments], ignore_index=True)
