"""The prediction log on its own: hostile directories, failing hooks, lost rows counted."""

from __future__ import annotations

import os
import shutil

import numpy as np

from aegis.config import ServeParams
from aegis.serve.predlog import Chunk, PredictionLog, read_log


def _chunk(rows: int = 2, *, flagged: bool | None = False) -> Chunk:
    return Chunk(
        time=1_800_000_000.0, request="r-1", client="c-1", version="v1.0.0", digest="sha256:x",
        latency_ms=1.0, mode="summary", rows=np.zeros((rows, 3)), labels=np.zeros(rows, int),
        probs=np.full((rows, 2), 0.5), scores=None,
        flagged=None if flagged is None else np.full(rows, flagged),
    )  # fmt: skip


def _log(directory, **kwargs) -> PredictionLog:
    params = ServeParams(log_flush_s=3600, max_store_bytes=1024**2)
    return PredictionLog(directory, params=params, **kwargs)


def test_a_planted_symlink_is_neither_written_through_counted_nor_deleted(tmp_path):
    directory, outside = tmp_path / "log", tmp_path / "precious"
    outside.write_bytes(b"x" * (2 * 1024**2))  # over the cap, were it counted
    log = _log(directory)
    try:
        planted = directory / f"pred-{os.getpid()}-20260101T000000-000001.parquet"
        planted.symlink_to(outside)
        (directory / "dangling-0-20260101T000000-000001.parquet").symlink_to(tmp_path / "nothing")
        log.append(_chunk())
        path = log.flush()
    finally:
        log.close()
    assert path is not None and path.is_file() and not path.is_symlink()
    assert outside.read_bytes() == b"x" * (2 * 1024**2)
    assert planted.is_symlink()  # not removed by the cap either
    assert log.dropped == 0


def test_a_failing_record_hook_loses_no_rows_and_the_flusher_lives(tmp_path):
    calls = []

    def broken(segment):
        calls.append(segment)
        raise OSError("segments.jsonl is a directory")

    log = _log(tmp_path / "log", on_segment=broken)
    try:
        log.append(_chunk(3))
        assert log.flush() is not None
        log.append(_chunk(2))
        assert log.flush() is not None
    finally:
        log.close()
    assert len(calls) == 2 and log.dropped == 0
    assert len(read_log(tmp_path / "log")) == 5


def test_rows_that_cannot_be_written_are_counted_as_lost(tmp_path):
    lost = []
    directory = tmp_path / "log"
    log = _log(directory, on_drop=lost.append)
    try:
        shutil.rmtree(directory)
        directory.write_text("not a directory any more")
        log.append(_chunk(4))
        assert log.flush() is None
    finally:
        log.close()
    assert lost == [4] and log.dropped == 4
    assert directory.read_text() == "not a directory any more"


def test_unscored_rows_are_null_not_clean(tmp_path):
    log = _log(tmp_path / "log")
    try:
        log.append(_chunk(2, flagged=None))
        log.append(_chunk(1, flagged=True))
        log.flush()
    finally:
        log.close()
    flagged = read_log(tmp_path / "log")["flagged"].tolist()
    assert flagged[:2] == [None, None] and flagged[2] is True
