"""The prediction log the monitor reads: one row per answered input, in Parquet segments.

Requests append one :class:`Chunk` each (their arrays, as they are: nothing is copied
row by row or hashed on the request path); a flusher thread writes a segment when
``serve.log_segment_rows`` rows are waiting or the oldest is ``serve.log_flush_s`` old,
and at shutdown. Before writing it calls ``before_write`` with the chunks (the gateway
scores the rows its detector has not scored yet, in one batch), then builds the Arrow
columns from the concatenated arrays. A segment holds one model version, is written to
a temporary name, fsynced, then hard-linked to a name no segment holds (never over a
signed one): a crash loses at most the buffered rows, never
a written segment. Each segment is signed into ``segments.jsonl``
(:class:`aegis.serve.records.Recorder`). The directory is capped at
``serve.max_store_bytes``: the oldest segments go first.

Never logged: the token. ``serve.log_inputs`` (as it was when the request came):
``full`` keeps the rows, ``summary`` a SHA-256 of each row and its mean, minimum and
maximum, ``none`` nothing of the input.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("aegis.serve")
# what this module names its segments (pred-PID-STAMP-COUNT.parquet): nothing else in
# the directory is counted or removed by the cap
_SEGMENT = re.compile(r"[a-z]+-\d+-\d{8}T\d{6}-\d{6}\.parquet")


@dataclass
class Chunk:
    """One answered request's rows, buffered until the next segment.

    ``scores``/``flagged`` are None until scored; ``pending`` is what the gateway needs
    to score them later (its served model), dropped once scored.
    """

    time: float
    request: str
    client: str
    version: str
    digest: str
    latency_ms: float
    mode: str  # serve.log_inputs when it was answered
    rows: np.ndarray  # (n, features) float64, dataset units
    labels: np.ndarray  # (n,)
    probs: np.ndarray  # (n, classes)
    scores: np.ndarray | None = None
    flagged: np.ndarray | None = None
    pending: Any = None
    watermarks: list[dict[str, Any]] | None = None  # aegis.serve.watermark.records
    ood: np.ndarray | None = None  # (n,) Mahalanobis scores, when the release has a reference
    extracting: bool | None = None  # its key was flagged for extraction; None: not monitored

    def __len__(self) -> int:
        return len(self.rows)


class PredictionLog:
    """Buffered, segment-rotating Parquet writer for one process."""

    def __init__(
        self, directory: Path, *, params, on_segment=None, before_write=None, on_drop=None,
        name: str = "pred",
    ) -> None:  # fmt: skip
        self.directory = directory
        self.params = params  # ServeParams of the served release (log_* and the cap)
        self.on_segment = on_segment  # called with each written segment's description
        self.before_write = before_write  # called with the chunks of a flush, before writing
        self.on_drop = on_drop  # called with the number of rows each time rows are lost
        self._name = f"{name}-{os.getpid()}"
        self._chunks: list[Chunk] = []
        self._rows = 0
        self._oldest = 0.0
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one flush at a time (flusher, close, tests)
        self._drop_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._count = 0
        self.written = 0  # rows in written segments (the metrics read it)
        self.dropped = 0  # rows lost since start (a full buffer, a failed write)
        directory.mkdir(parents=True, exist_ok=True)
        _warm_arrow()
        self._thread = threading.Thread(target=self._run, name="aegis-predlog", daemon=True)
        self._thread.start()

    def append(self, chunk: Chunk) -> None:
        """Buffers one request's rows (called on the request path: no I/O, no copies)."""
        with self._lock:
            if not self._chunks:
                self._oldest = chunk.time
            # a flusher that cannot write must not grow memory without bound
            if self._rows + len(chunk) > 4 * self.params.log_segment_rows:
                self._drop(len(chunk))
                return
            self._chunks.append(chunk)
            self._rows += len(chunk)
            if self._rows >= self.params.log_segment_rows:
                self._wake.set()

    def _drop(self, rows: int) -> None:
        with self._drop_lock:  # from the request path and the flusher
            self.dropped += rows
        if self.on_drop is not None:
            self.on_drop(rows)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=min(self.params.log_flush_s, 1.0))
            self._wake.clear()
            with self._lock:
                due = self._chunks and (
                    self._rows >= self.params.log_segment_rows
                    or time.time() - self._oldest >= self.params.log_flush_s
                )
            if due:
                try:
                    self.flush()
                except Exception:  # the flusher must outlive any one bad flush
                    log.exception("prediction log: flush failed")

    def flush(self) -> Path | None:
        """Writes the buffered rows, one segment per model version; the last one's path.

        None when nothing was buffered or nothing could be written.
        """
        with self._write_lock:
            with self._lock:
                chunks, self._chunks, self._rows = self._chunks, [], 0
            if not chunks:
                return None
            if self.before_write is not None:
                try:
                    self.before_write(chunks)
                except Exception:  # a failed scoring pass must not cost the rows
                    log.exception("prediction log: scoring before a segment failed")
            last = None
            for group in _by_version(chunks):
                try:
                    last, segment = self._write(group)
                except Exception as exc:  # OSError, or Arrow refusing a value: rows lost
                    rows = sum(len(c) for c in group)
                    self._drop(rows)
                    log.error("prediction log: cannot write a segment (%s); %d rows lost",
                              exc, rows)  # fmt: skip
                    continue
                # the segment is on disk: a failure from here on loses no rows
                try:
                    if self.on_segment is not None:
                        self.on_segment(segment)
                except Exception as exc:
                    log.error("prediction log: %s written but not recorded (%s)",
                              last.name, exc)  # fmt: skip
                try:
                    self._enforce_cap()
                except OSError as exc:
                    log.error("prediction log: cap not enforced (%s)", exc)
            return last

    def _write(self, chunks: list[Chunk]) -> tuple[Path, dict[str, Any]]:
        """Writes one segment; returns its path and description (for ``on_segment``).

        Through a fresh temporary file (``mkstemp``: a random name, created exclusively,
        never through a planted symlink), fsynced, hard-linked to a new name, the directory
        fsynced.
        """
        import pyarrow.parquet as pq

        first = datetime.fromtimestamp(chunks[0].time, UTC)
        last = datetime.fromtimestamp(chunks[-1].time, UTC)
        stamp = first.strftime("%Y%m%dT%H%M%S")
        table = _table(chunks)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{self._name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w+b") as fh:
                pq.write_table(table, fh)
                fh.flush()
                os.fsync(fh.fileno())
                fh.seek(0)
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
            # a hard link, not a rename: it never replaces a segment already signed (a
            # restarted log in the same process and second would reuse its name)
            while True:
                self._count += 1
                path = self.directory / f"{self._name}-{stamp}-{self._count:06d}.parquet"
                try:
                    os.link(tmp, path)
                    break
                except FileExistsError:
                    continue
            os.unlink(tmp)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(self.directory)
        rows = sum(len(c) for c in chunks)
        self.written += rows
        segment = {
            "file": path.name, "sha256": digest, "rows": rows,
            "first": first.isoformat(), "last": last.isoformat(),
            "versions": [chunks[0].version],
        }  # fmt: skip
        marks = [m for c in chunks if c.watermarks for m in c.watermarks]
        if marks:  # the evidence of a watermark: signed with the segment
            segment["watermarks"] = marks
        return path, segment

    def _segments(self) -> list[tuple[int, int, Path]]:
        """``(mtime_ns, size, path)`` of this directory's segments: regular files only.

        A planted symlink or directory is not a segment (neither counted nor deleted);
        a file another worker removed meanwhile is skipped.
        """
        found = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if not _SEGMENT.fullmatch(entry.name):
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                found.append((info.st_mtime_ns, info.st_size, Path(entry.path)))
        return sorted(found)

    def _enforce_cap(self) -> None:
        segments = self._segments()
        total = sum(size for _, size, _ in segments)
        while segments and total > self.params.max_store_bytes:
            _, size, oldest = segments.pop(0)
            total -= size
            oldest.unlink(missing_ok=True)

    def close(self) -> None:
        """Stops the flusher and writes what is buffered."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self.flush()


def _warm_arrow() -> None:
    """Pays pyarrow's first-use imports now, before the gateway takes requests.

    Arrow's first array from numpy imports pandas (about a second, holding the GIL):
    in the flusher's first flush that stalled every request in flight.
    """
    import pyarrow as pa
    import pyarrow.parquet  # the writer's module, imported once here too

    pa.array(np.zeros(1))


def _fsync_dir(directory: Path) -> None:
    """Makes a new name in ``directory`` durable (the entry, not only the file's bytes)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _by_version(chunks: list[Chunk]) -> list[list[Chunk]]:
    """Consecutive runs of one version (a reload mid-buffer starts a new segment)."""
    groups: list[list[Chunk]] = []
    for chunk in chunks:
        if groups and groups[-1][0].version == chunk.version:
            groups[-1].append(chunk)
        else:
            groups.append([chunk])
    return groups


def _per_row(values: list[Any], type_, index: np.ndarray) -> Any:
    """A request-level value repeated for each of its rows, as an Arrow array.

    ``index`` maps each row to its request; Arrow takes the values (no per-row Python).
    """
    import pyarrow as pa

    return pa.array(values, type=type_).take(index)


def _fixed_lists(blocks: list[np.ndarray]) -> Any:
    import pyarrow as pa

    flat = np.concatenate(blocks).astype(np.float64)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1])


def _marked(chunk: Chunk) -> np.ndarray:
    out = np.zeros(len(chunk), dtype=bool)
    if chunk.watermarks:
        out[[m["row"] for m in chunk.watermarks]] = True
    return out


def _table(chunks: list[Chunk]) -> Any:
    """The Arrow table of one version's chunks, from whole arrays (no per-row Python)."""
    import pyarrow as pa

    counts = np.array([len(c) for c in chunks])
    index = np.repeat(np.arange(len(chunks)), counts)  # row -> its request
    n = int(counts.sum())
    times = np.array([int(c.time * 1_000_000) for c in chunks])[index]
    # rows never scored (no detector, or its pass failed) are null, not "not flagged"
    flagged = pa.array(
        np.concatenate([c.flagged if c.flagged is not None else np.zeros(len(c), bool)
                        for c in chunks]),
        mask=np.array([c.flagged is None for c in chunks])[index],
    )  # fmt: skip
    scored = all(c.scores is not None for c in chunks)
    scores = np.concatenate([c.scores for c in chunks]) if scored else [None] * n
    placed = all(c.ood is not None for c in chunks)  # the monitor's per-row OOD score
    ood = np.concatenate([c.ood for c in chunks]) if placed else [None] * n
    columns: dict[str, Any] = {
        "time": pa.array(times, type=pa.timestamp("us", tz="UTC")),
        "request": _per_row([c.request for c in chunks], pa.string(), index),
        "client": _per_row([c.client for c in chunks], pa.string(), index),
        "version": _per_row([c.version for c in chunks], pa.string(), index),
        "model_digest": _per_row([c.digest for c in chunks], pa.string(), index),
        "label": pa.array(np.concatenate([c.labels for c in chunks]).astype(np.int64)),
        "watermarked": pa.array(np.concatenate([_marked(c) for c in chunks])),
        "probs": _fixed_lists([c.probs for c in chunks]),
        "flagged": flagged,
        "score": pa.array(scores, type=pa.float64()),
        "ood_score": pa.array(ood, type=pa.float64()),
        "latency_ms": _per_row([c.latency_ms for c in chunks], pa.float64(), index),
        "extracting": _per_row([c.extracting for c in chunks], pa.bool_(), index),
        "log_inputs": _per_row([c.mode for c in chunks], pa.string(), index),
    }
    modes = {c.mode for c in chunks}  # one per version: the release's signed params
    if modes == {"full"}:
        columns["inputs"] = _fixed_lists([c.rows for c in chunks])
    elif modes == {"summary"}:
        rows = np.ascontiguousarray(np.concatenate([c.rows for c in chunks]), dtype=np.float64)
        columns["input_sha256"] = pa.array([hashlib.sha256(r.tobytes()).hexdigest() for r in rows])
        columns["input_mean"] = pa.array(rows.mean(axis=1))
        columns["input_min"] = pa.array(rows.min(axis=1))
        columns["input_max"] = pa.array(rows.max(axis=1))
    return pa.table(columns)


def read_log(directory: Path):
    """Every written segment as one pandas frame (for the monitor, tests and benchmarks)."""
    import pandas as pd

    segments = sorted(directory.glob("*.parquet"))
    if not segments:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(p) for p in segments], ignore_index=True)
