"""The gateway's extraction monitor: one history per API client, kept across restarts.

The statistics are :mod:`aegis.evaluate.extraction`'s (PRADA's distance test and the
rate of out-of-distribution queries), against the reference the served release's
evaluation signed into ``metrics.json``. The monitor runs off the request path, in the
prediction log's flusher (:meth:`ExtractionMonitor.observe`, once per flush, batched):
a client is flagged within a flush interval of the query that tips it, and the request
path only looks the flag up (``serve.on_extraction``: ``alert`` signs an alert and
counts a metric; ``throttle`` also divides the client's rate; ``block`` answers 403).

A flag stays until the client is revoked (the history belongs to the key, not to a
session). The histories are saved in ``.aegis/serve/extraction/``: per worker, a
``state-<pid>.npz`` of arrays (PRADA's point sets and distances; no pickle) and a
``state-<pid>.json`` the serving key signs, holding the counts and the npz's SHA-256.
A starting worker adopts every saved state under a lock (merging and removing them), so
histories survive restarts and changes in the number of workers; one that does not
verify stops the gateway (``extraction-state``): an edited file must not wipe a key's
record. Each worker monitors the requests it answers (with ``--workers N``, a client's
queries are spread over N histories until the next restart merges them).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aegis.crypto.documents import sign_document, verify_document
from aegis.crypto.truststore import TrustStore
from aegis.errors import RefusedError, UnsafeFileError
from aegis.evaluate.extraction import POINTS_PER_CLASS, WINDOW, KeyState
from aegis.fileutil import atomic_write, ensure_dir, file_lock, read_regular

log = logging.getLogger("aegis.serve")
KIND = "aegis-serve-extraction/1"
_NPZ = re.compile(r"state-[0-9]+\.[0-9a-f]{16}\.npz")
STATE_CAP = 256 * 1024 * 1024
SAVE_EVERY_S = 5.0


@dataclass(frozen=True)
class KeyReport:
    """What ``aegis keys api list --json`` shows of one client."""

    queries: int
    extraction_score: float
    flagged: bool
    signal: str | None
    flagged_at: int | None


def _meta(state: KeyState, score: float) -> dict[str, Any]:
    return {
        "queries": state.queries, "counted": state.counted, "ood": state.ood,
        "class_stats": {str(c): v for c, v in state.class_stats.items()},
        "classes_seen": sorted(state.classes_seen), "flagged_at": state.flagged_at,
        "signal": state.signal, "w": state.w, "ood_p": state.ood_p, "score": score,
    }  # fmt: skip


def _merge(into: KeyState, other: KeyState) -> None:
    """Adds ``other``'s history (another worker's, or a saved one) to ``into``."""
    into.queries += other.queries
    into.counted += other.counted
    into.ood += other.ood
    into.distances = (into.distances + other.distances)[-WINDOW:]
    for c, pts in other.points.items():
        mine = into.points.get(c)
        into.points[c] = pts if mine is None else np.concatenate([mine, pts])[:POINTS_PER_CLASS]
    for c, (n, s, ss) in other.class_stats.items():
        a = into.class_stats.get(c, [0.0, 0.0, 0.0])
        into.class_stats[c] = [a[0] + n, a[1] + s, a[2] + ss]
    into.classes_seen |= other.classes_seen
    if other.flagged_at is not None and (into.flagged_at is None or into.signal is None):
        into.flagged_at, into.signal = other.flagged_at, other.signal
    into.w = into.w if other.w is None else other.w
    into.ood_p = into.ood_p if other.ood_p is None else other.ood_p


def read_states(directory: Path, trust: TrustStore) -> dict[str, tuple[KeyState, float]]:
    """Every saved history in ``directory``, verified and merged: client id -> (state, score).

    Raises:
        RefusedError: ``extraction-state``: a state that does not verify (signature,
            signer, digest, arrays).
    """
    merged: dict[str, tuple[KeyState, float]] = {}
    for doc_path in sorted(directory.glob("state-*.json")):
        for client, (state, score) in _read_state(doc_path, trust).items():
            if client in merged:
                mine, mine_score = merged[client]
                _merge(mine, state)
                merged[client] = (mine, max(mine_score, score))
            else:
                merged[client] = (state, score)
    return merged


def _refuse(path: Path, why: str) -> RefusedError:
    return RefusedError(
        "extraction-state", f"{path.name}: {why}; the clients' extraction histories cannot be "
        f"trusted (move {path.parent} aside to start them afresh, knowingly)",
    )  # fmt: skip


def _read_state(doc_path: Path, trust: TrustStore) -> dict[str, tuple[KeyState, float]]:
    import json

    try:
        document = json.loads(read_regular(doc_path, limit=1 << 24, what=doc_path.name))
        signed = verify_document(document, kind=KIND, trust=trust)
    except (OSError, ValueError, UnsafeFileError, RefusedError) as exc:
        raise _refuse(doc_path, f"does not verify ({exc})") from None
    if signed.signer.role != "serving" or signed.signer.status == "revoked":
        who = signed.signer.name
        raise _refuse(doc_path, f"signed by '{who}', not a serving key in good standing")
    body = signed.body
    name = body.get("npz")
    if not isinstance(name, str) or not _NPZ.fullmatch(name):
        raise _refuse(doc_path, "it names no arrays file of ours")
    npz_path = doc_path.with_name(name)
    try:
        raw = read_regular(npz_path, limit=STATE_CAP, what=npz_path.name)
    except (OSError, UnsafeFileError) as exc:
        raise _refuse(doc_path, f"its arrays cannot be read ({exc})") from None
    if hashlib.sha256(raw).hexdigest() != body.get("npz_sha256"):
        raise _refuse(doc_path, "its arrays are not the ones it signed")
    try:
        arrays = dict(np.load(io.BytesIO(raw), allow_pickle=False))
        clients = sorted(body["clients"].items())
        return {c: _state_of(i, meta, arrays) for i, (c, meta) in enumerate(clients)}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _refuse(doc_path, f"malformed ({exc})") from None


def _state_of(index: int, meta: dict[str, Any], arrays: dict[str, np.ndarray]):
    state = KeyState(
        queries=int(meta["queries"]), counted=int(meta["counted"]), ood=int(meta["ood"]),
        distances=[float(d) for d in arrays[f"c{index}.distances"]],
        class_stats={int(c): [float(v) for v in s] for c, s in meta["class_stats"].items()},
        classes_seen={int(c) for c in meta["classes_seen"]},
        flagged_at=meta["flagged_at"], signal=meta["signal"], w=meta["w"], ood_p=meta["ood_p"],
    )  # fmt: skip
    prefix = f"c{index}.points."
    for name, value in arrays.items():
        if name.startswith(prefix):
            state.points[int(name[len(prefix) :])] = value.astype(np.float32)
    return state, float(meta["score"])


class ExtractionMonitor:
    """The monitor of one gateway process (thread-safe; see the module docstring)."""

    def __init__(self, root: Path, directory: Path, *, key, trust: TrustStore, on_flag) -> None:
        self.directory = ensure_dir(root, directory)
        self._key = key
        self._on_flag = on_flag  # (client id, KeyState, score) once, when a client is flagged
        self._lock = threading.Lock()
        self._name = f"state-{os.getpid()}"
        self._dirty = False
        self._saved_at = 0.0
        self._npz: str | None = None  # the arrays file our last state names
        with file_lock(self.directory / ".lock"):
            adopted = list(self.directory.glob("state-*.json"))
            saved = read_states(self.directory, trust)
            self.states = {client: state for client, (state, _) in saved.items()}
            self.scores = {client: score for client, (_, score) in saved.items()}
            self._write()  # ours first: nothing adopted is lost if we stop now
            for path in adopted:
                if path.stem != self._name:
                    path.unlink(missing_ok=True)
            for path in self.directory.glob("state-*.npz"):  # adopted ones, leftovers
                if path.name != self._npz:
                    path.unlink(missing_ok=True)

    def flagged(self, client_id: str) -> bool:
        state = self.states.get(client_id)
        return state is not None and state.flagged_at is not None

    def observe(self, chunks, served) -> None:
        """Adds a flush's answered rows, per client, in order (the flusher's thread)."""
        import torch

        from aegis.serve.served import model_inputs

        ref = served.extraction
        if ref is None or not chunks:
            return
        if any(c.ood is None for c in chunks):  # the flusher did not score them (it failed)
            place_ood(served, chunks)
        far = np.concatenate([c.ood for c in chunks]) > ref.ood_threshold
        rows = np.concatenate([c.rows for c in chunks])
        x = torch.from_numpy(model_inputs(rows, served.loaded.spec))
        labels = np.concatenate([c.probs.argmax(axis=1) for c in chunks])  # the model's own
        flat = x.reshape(len(x), -1).numpy()
        owners = np.repeat([c.client for c in chunks], [len(c) for c in chunks])
        with self._lock:
            for client in dict.fromkeys(owners.tolist()):
                mine = owners == client
                state = self.states.setdefault(client, KeyState())
                was = state.flagged_at is not None
                evidence = state.observe_checked(flat[mine], labels[mine], far[mine], ref)
                self.scores[client] = evidence.score
                if evidence.flagged and not was:
                    self._on_flag(client, state, evidence.score)
                    self._saved_at = 0.0  # a new flag is saved at the next chance
            self._dirty = True

    def save(self, *, force: bool = False) -> None:
        """Writes this worker's histories when changed (at most every few seconds)."""
        if not self._dirty or (not force and time.monotonic() - self._saved_at < SAVE_EVERY_S):
            return
        with self._lock:
            self._write()

    def _write(self) -> None:
        arrays: dict[str, np.ndarray] = {}
        clients: dict[str, Any] = {}
        for index, client in enumerate(sorted(self.states)):
            state = self.states[client]
            clients[client] = _meta(state, self.scores.get(client, 0.0))
            arrays[f"c{index}.distances"] = np.asarray(state.distances, dtype=np.float64)
            for c, pts in state.points.items():
                arrays[f"c{index}.points.{c}"] = pts
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        raw = buffer.getvalue()
        digest = hashlib.sha256(raw).hexdigest()
        # the arrays under a new name first, then the signed state naming them: a crash
        # in between leaves the previous pair whole
        npz = f"{self._name}.{digest[:16]}.npz"
        body = {"kind": KIND, "time": time.time(), "pid": os.getpid(), "clients": clients,
                "npz": npz, "npz_sha256": digest}  # fmt: skip
        import json

        atomic_write(self.directory / npz, raw)
        document = sign_document(self._key, body)
        atomic_write(self.directory / f"{self._name}.json",
                     json.dumps(document, sort_keys=True).encode())  # fmt: skip
        if self._npz not in (None, npz):
            (self.directory / self._npz).unlink(missing_ok=True)
        self._npz = npz
        self._dirty = False
        self._saved_at = time.monotonic()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.save(force=True)


def extraction_reports(ws, trust: TrustStore) -> dict[str, KeyReport]:
    """Every client's saved history as ``aegis keys api list`` shows it (client id -> report).

    A running gateway rewrites its state every few seconds (the arrays file first, then
    the signed state naming it): a read that races a rewrite is tried again.

    Raises:
        RefusedError: ``extraction-state``: a saved state that does not verify.
    """
    from aegis.serve.records import serve_dir

    directory = serve_dir(ws) / "extraction"
    if not directory.is_dir() or directory.is_symlink():
        return {}
    for attempt in range(3):
        try:
            states = read_states(directory, trust)
            break
        except RefusedError:
            if attempt == 2:
                raise
            time.sleep(0.2)
    return {
        client: KeyReport(
            state.queries, score, state.flagged_at is not None, state.signal, state.flagged_at
        )
        for client, (state, score) in states.items()
    }


def place_ood(served, chunks) -> None:
    """Each chunk's per-row OOD scores under ``served``'s extraction reference, in one batch
    (the prediction log's ``ood_score`` and the monitors' input: computed once per flush)."""
    ref = served.extraction
    if ref is None or not chunks:
        return
    import torch

    from aegis.serve.served import model_inputs

    rows = np.concatenate([c.rows for c in chunks])
    x = torch.from_numpy(model_inputs(rows, served.loaded.spec))
    scores = ref.scores(served.loaded.model, x)
    start = 0
    for chunk in chunks:
        chunk.ood = scores[start : start + len(chunk)]
        start += len(chunk)
