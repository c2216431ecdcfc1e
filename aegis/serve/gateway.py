"""The gateway's core: who may ask, how much, which verified model answers, what is kept.

The HTTP layer (:mod:`aegis.serve.app`) only moves bytes; every decision is here, and
raises :class:`GatewayError` with the status and the reason the metrics count.

Two ledgers, two threads of change:

- the request path checks the audit log's size and time on every request (a stat);
  when it changed, it refreshes its ledger and reloads the signed client list, so a
  revoked client is refused from the first request after ``aegis keys api revoke``;
- a watcher thread polls the same stamp every ``serve.reload_interval`` seconds and,
  when the registry's prod moved (``aegis promote``, ``aegis rollback``), verifies and
  loads the new version *beside* the old one, then swaps one reference: requests in
  flight finish on the old model, none fails. A version that fails verification is
  never loaded; the old one keeps serving and a signed alert is written.

The gateway never reconciles an interrupted registry change (it cannot write tags):
it serves what the audited tags say, skipping tags still in flight.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from aegis.errors import AegisError
from aegis.events import EventOutbox, make_event
from aegis.fileutil import ensure_dir
from aegis.ledger import Ledger
from aegis.monitor.throttles import throttles
from aegis.registry.targets import Target, parse_target
from aegis.serve.clients import (
    EMPTY,
    Client,
    ClientList,
    Limit,
    load_clients,
    read_hex_secret,
    read_secret,
    token_hash,
)
from aegis.serve.extraction import ExtractionMonitor, place_ood
from aegis.serve.limiter import LimitsUnavailable, MemoryLimiter, RedisLimiter
from aegis.serve.metrics import GatewayMetrics
from aegis.serve.predlog import Chunk, PredictionLog
from aegis.serve.records import Recorder, load_serving_key, serve_dir
from aegis.serve.served import InputError, ServedModel, load_served
from aegis.serve.watermark import Watermarker, records, served_answers
from aegis.workspace import Workspace

log = logging.getLogger("aegis.serve")
MAX_BODY = 1024 * 1024  # bytes; larger bodies are 413


class GatewayError(Exception):
    """A refused request: HTTP status, the reason counted, a message for the client."""

    def __init__(
        self, status: int, reason: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


class PredictBody(BaseModel):
    """``{"inputs": [[...], ...]}`` or ``{"records": [{column: value}, ...]}``."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    inputs: list[list[float]] | None = None
    records: list[dict[str, float]] | None = None


@dataclass(frozen=True)
class GatewayConfig:
    """What one gateway process needs (JSON in the environment for uvicorn's workers)."""

    workspace: str
    target: str
    key: str
    redis: str | None = None
    reload: bool = True  # False: a sealed export, decrypted at start, is never swapped

    def to_env(self) -> str:
        import json

        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> GatewayConfig:
        import json

        return cls(**json.loads(text))


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


class Gateway:
    """One gateway process's state (see the module docstring)."""

    def __init__(self, config: GatewayConfig, *, served: ServedModel | None = None) -> None:
        self.ws = Workspace(Path(config.workspace))
        self.target = parse_target(config.target)
        self.reloads = config.reload
        self._ledger = Ledger.load(self.ws)  # the request path's
        self._watch_ledger = Ledger.load(self.ws)  # the watcher thread's
        key = load_serving_key(self._ledger, Path(config.key))
        self.recorder = Recorder(self.ws, key)
        self.served = served or load_served(self._watch_ledger, self.target)
        self._clients_lock = threading.Lock()
        self._set_clients(load_clients(self._ledger))
        self.throttled = throttles(self._ledger)  # the monitor's: {client id: until}
        self._log_path = self.ws.audit().log_path
        self._client_stamp = self._watch_stamp = _stamp(self._log_path)
        self.metrics = GatewayMetrics()
        self._serving_metrics()
        # one component at a time, following no planted symlink out of the workspace
        store = ensure_dir(self.ws.root, serve_dir(self.ws))
        ensure_dir(self.ws.root, store / "log")
        prefix = "aegis:" + self.ws.label()
        self.limiter = (
            RedisLimiter(config.redis, prefix=prefix)
            if config.redis
            else MemoryLimiter(store / "counters.json")
        )
        self.events = EventOutbox()  # PREFECT_API_URL, when the gateway has one
        self.extraction = ExtractionMonitor(
            self.ws.root, store / "extraction", key=key, trust=self._ledger.trust,
            on_flag=self._extraction_flagged,
        )  # fmt: skip
        self._marker: tuple[ServedModel, Watermarker | None] | None = None
        self.predlog = PredictionLog(
            store / "log", params=self.served.params, on_segment=self._segment_written,
            before_write=self._before_write, on_drop=self.metrics.log_dropped.inc,
        )  # fmt: skip
        # request ids: the pid and a random tag, then a counter; a restarted gateway that
        # reuses a pid never repeats an id (feedback names its rows by it)
        self._id_prefix = f"{os.getpid():x}{secrets.token_hex(4)}"
        self._ids = itertools.count(1)
        self._refused: set[tuple[str, str]] = set()  # (version, message) alerted already
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="aegis-reload", daemon=True)
        self._watcher.start()

    # -- clients -----------------------------------------------------------------------------

    def _set_clients(self, clients: ClientList) -> None:
        # everything read before anything is assigned: a failure keeps the old state whole
        secret = read_secret(self.ws) if clients.clients else None
        by_hash = clients.by_hash()
        self.clients, self._by_hash, self._secret = clients, by_hash, secret
        self._clients_refused = None

    def _sync_clients(self) -> None:
        stamp = _stamp(self._log_path)
        if stamp == self._client_stamp:
            return
        with self._clients_lock:
            if stamp == self._client_stamp:
                return
            try:
                self._ledger.refresh()
                self.throttled = throttles(self._ledger)
                clients = load_clients(self._ledger)
                if clients.digest != self.clients.digest or self._clients_refused:
                    self._set_clients(clients)
            except AegisError as exc:
                # fail closed: a list that no longer verifies (its operator revoked, the
                # log tampered with) admits no one until an operator signs a good one
                if self._clients_refused is None:
                    self.recorder.alert(
                        "api-clients", f"client list refused, no client admitted: {exc}"
                    )
                self._clients_refused = str(exc)
            self._client_stamp = stamp

    def authenticate(self, header: str | None, *, scope: str) -> Client:
        """The client a bearer token names, if active and in ``scope``.

        Raises:
            GatewayError: 401 (no token, malformed, unknown), 403 (revoked, out of scope),
                503 (the client list no longer verifies: no one is admitted).
        """
        self._sync_clients()
        if self._clients_refused is not None:
            raise GatewayError(
                503, "api-clients", "the gateway's client list does not verify; no client is "
                "admitted until an operator re-signs it (operators are alerted)",
            )  # fmt: skip
        if not header or not header.startswith("Bearer "):
            raise GatewayError(401, "unauthenticated", "an Authorization: Bearer token is needed")
        token = header[7:].strip()
        client = self._by_hash.get(token_hash(self._secret, token)) if self._secret else None
        if client is None:
            raise GatewayError(401, "unauthenticated", "unknown token")
        if client.status != "active":
            raise GatewayError(403, "revoked", f"client '{client.name}' is revoked")
        if scope not in client.scopes:
            raise GatewayError(403, "scope", f"client '{client.name}' lacks the {scope} scope")
        return client

    # -- predictions -------------------------------------------------------------------------

    def rows_of(self, body: bytes, served: ServedModel) -> np.ndarray:
        """Parses and checks a predict body against the served model's input spec.

        Raises:
            GatewayError: 422, naming what is wrong.
        """
        try:
            parsed = PredictBody.model_validate_json(body)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "body"
            raise GatewayError(422, "malformed", f"{where}: {err['msg']}") from None
        if (parsed.inputs is None) == (parsed.records is None):
            raise GatewayError(422, "malformed", "give exactly one of 'inputs' or 'records'")
        items = parsed.inputs if parsed.inputs is not None else parsed.records
        if not items or len(items) > served.params.max_batch:
            most = served.params.max_batch
            raise GatewayError(422, "batch", f"a request holds 1 to {most} rows (serve.max_batch)")
        try:
            if parsed.records is not None:
                rows = served.rows_of_records(parsed.records)
            else:
                width = {len(r) for r in parsed.inputs}
                if len(width) != 1:
                    raise InputError("every row needs the same number of features")
                rows = np.asarray(parsed.inputs, dtype=np.float64)
            served.check_rows(rows)
        except InputError as exc:
            raise GatewayError(422, "input", str(exc)) from None
        return rows

    def predict(self, client: Client, body: bytes, *, started: float) -> dict[str, Any]:
        """Answers ``POST /v1/predict`` for an authenticated client.

        In order: the body parses and fits the model's input spec (422), the rows fit
        the client's limits (429), then the model answers; the detector's refusal
        (``serve.on_adversarial: refuse``) counts against the limits too.
        """
        try:
            return self._predict(client, body, started)
        except LimitsUnavailable as exc:
            log.error("limits unavailable: %s", exc)
            self.metrics.requests.labels(client=client.name, status="503").inc()
            raise GatewayError(503, "limits", "limits cannot be counted now; retry") from None
        except GatewayError as exc:
            self.metrics.requests.labels(client=client.name, status=str(exc.status)).inc()
            raise

    def feedback(self, client: Client, body: bytes) -> dict[str, Any]:
        """Answers ``POST /v1/feedback``: one signed line, one row of the client's limits.

        Raises:
            GatewayError: 422 (not feedback: :mod:`aegis.serve.feedback`), 429, 503.
        """
        from aegis.serve.feedback import feedback_document

        served = self.served
        try:
            self._admit(self._rate_policy(client, served), 1)
        except LimitsUnavailable:
            raise GatewayError(503, "limits", "limits cannot be counted now; retry") from None
        try:
            document = feedback_document(self.recorder.key, body, client_id=client.id,
                                         max_rows=served.params.max_batch)  # fmt: skip
        except ValueError as exc:
            raise GatewayError(422, "malformed", str(exc)) from None
        self.recorder.feedback(document)
        return {"request": document["body"]["request"], "labels": len(document["body"]["labels"])}

    def _admit(self, client: Client, rows: int) -> None:
        """Counts ``rows`` against the client's limits.

        Raises:
            GatewayError: 429 with Retry-After, over a limit.
            LimitsUnavailable: The limits cannot be counted (the callers answer 503).
        """
        decision = self.limiter.admit(client, rows)
        if not decision.allowed:
            from aegis.serve.clients import retry_after

            raise GatewayError(
                429, decision.limit, f"over the {decision.limit} of client '{client.name}'",
                headers={"Retry-After": str(retry_after(decision.retry_after))},
            )  # fmt: skip

    def _predict(self, client: Client, body: bytes, started: float) -> dict[str, Any]:
        served = self.served  # one model for the whole request, whatever reloads meanwhile
        client = self._rate_policy(client, served)
        try:
            rows = self.rows_of(body, served)
        except GatewayError:
            # a refused body costs one row (when it fits): probing the checks is not free
            self.limiter.admit(client, 1)
            raise
        if len(rows) > client.rate.count or len(rows) > client.quota.count:
            raise GatewayError(
                422, "batch", f"{len(rows)} rows never fit client '{client.name}''s limits "
                f"({client.rate}, {client.quota})",
            )  # fmt: skip
        self._admit(client, len(rows))
        prediction = served.predict(rows)
        marks = None
        if (marker := self._watermarker(served)) is not None:
            marks = marker.mark(rows, prediction.labels)
        labels, probs = served_answers(prediction.labels, prediction.probs, marks)
        flagged = 0 if prediction.deferred else int(prediction.flagged.sum())
        policy = served.params.on_adversarial
        if flagged:
            self.metrics.adversarial.labels(action=policy).inc(flagged)
        request = f"{self._id_prefix}-{next(self._ids)}"
        self.predlog.append(Chunk(
            time=time.time(), request=request, client=client.id, version=served.version,
            digest=served.release.model_digest, latency_ms=(time.perf_counter() - started) * 1000,
            mode=served.params.log_inputs, rows=rows, labels=labels,
            probs=prediction.probs, scores=prediction.scores,
            flagged=None if prediction.deferred else prediction.flagged,
            pending=served if prediction.deferred or served.extraction is not None else None,
            watermarks=None if marks is None else records(
                rows, prediction.labels, marks, client=client.id, version=served.version,
                request=request, time=time.time(), classes=served.loaded.spec.classes,
            ),
        ))  # fmt: skip
        if flagged and policy == "refuse":
            raise GatewayError(
                422, "adversarial", f"{flagged} of {len(rows)} rows look adversarial (refused)"
            )
        if marks is not None:
            self.metrics.watermarked.inc(len(marks.rows))
            prediction = dataclasses.replace(prediction, labels=labels, probs=probs)
        self.metrics.answered(client.name, len(rows))
        return served.shape_output(prediction) | {"request": request}

    # -- theft: the extraction monitor and the watermark -------------------------------------

    def _rate_policy(self, client: Client, served: ServedModel) -> Client:
        """A lower rate for a key the production monitor throttled (until it lapses), and
        ``serve.on_extraction`` for a client the extraction monitor flagged: 403, or a
        lower rate."""
        if self.throttled.get(client.id, 0.0) > time.time():
            client = self._slower(client, served)
        policy = served.params.on_extraction
        if policy in ("off", "alert") or not self.extraction.flagged(client.id):
            return client
        if policy == "block":
            raise GatewayError(
                403, "extraction", f"client '{client.name}' is blocked: its queries look like "
                "model extraction (operators are alerted)",
            )  # fmt: skip
        return self._slower(client, served)

    @staticmethod
    def _slower(client: Client, served: ServedModel) -> Client:
        slower = Limit(max(client.rate.count // served.params.throttle_factor, 1),
                       client.rate.seconds)  # fmt: skip
        return dataclasses.replace(client, rate=slower)

    def _extraction_flagged(self, client_id: str, state, score: float) -> None:
        name = next((c.name for c in self.clients.clients if c.id == client_id), client_id)
        policy = self.served.params.on_extraction
        self.metrics.extraction.labels(client=name, signal=state.signal).inc()
        self.recorder.alert(
            "extraction", f"client '{name}' looks like model extraction ({state.signal} test, "
            f"after {state.queries} queries; policy {policy})", client=client_id, name=name,
            signal=state.signal, queries=state.queries, score=score, policy=policy,
        )  # fmt: skip
        self.events.put(make_event(
            "aegis.extraction.flagged", resource_id=f"aegis.client.{client_id}",
            resource={"aegis.client": client_id, "aegis.client.name": name,
                      "aegis.signal": str(state.signal), "aegis.policy": policy},
            payload={"queries": state.queries, "score": score,
                     "version": self.served.release.version},
        ))  # fmt: skip

    def _watermarker(self, served: ServedModel) -> Watermarker | None:
        """The watermark of ``served``'s signed params (kept for the model it was made for:
        a reload with another rate or class count gets its own)."""
        cached = self._marker
        if cached is None or cached[0] is not served:
            rate = served.params.watermark_rate
            marker = None
            if rate > 0:
                from aegis.serve.watermark import secret_path

                secret = read_hex_secret(secret_path(self.ws), create=True,
                                         what="watermark secret", missing="")  # fmt: skip
                marker = Watermarker(secret, rate=rate, classes=served.loaded.spec.classes)
            cached = self._marker = (served, marker)
        return cached[1]

    def _before_write(self, chunks: list[Chunk]) -> None:
        """The flusher's work before a segment, per served model: deferred scores, then the
        extraction monitor (which sees the rows even when scoring failed)."""
        groups: dict[int, list[Chunk]] = {}
        for chunk in chunks:
            if chunk.pending is not None:
                groups.setdefault(id(chunk.pending), []).append(chunk)
        try:
            for group in groups.values():
                unscored = [c for c in group if c.flagged is None]
                if unscored and group[0].pending.detects:
                    self._score_deferred(group[0].pending, unscored)
        finally:
            for group in groups.values():
                served = group[0].pending
                for chunk in group:
                    chunk.pending = None
                try:
                    place_ood(served, group)
                except Exception:  # a failed score leaves the column null, never the log
                    log.exception("OOD scores not computed")
                if self.served.params.on_extraction != "off":
                    self.extraction.observe(group, served)
                    for chunk in group:  # the monitor's extraction_count reads it per row
                        chunk.extracting = self.extraction.flagged(chunk.client)

    def _score_deferred(self, served: ServedModel, group: list[Chunk]) -> None:
        """Scores, in one batch, the rows ``served`` answered under ``flag``."""
        rows = np.concatenate([c.rows for c in group])
        scores = served.scores_of(rows, np.concatenate([c.probs for c in group]))
        flags = scores > served.detector.threshold
        start = 0
        for chunk in group:
            end = start + len(chunk)
            chunk.scores, chunk.flagged = scores[start:end], flags[start:end]
            start = end
        if flagged := int(flags.sum()):
            self.metrics.adversarial.labels(action="flag").inc(flagged)

    # -- reloads -----------------------------------------------------------------------------

    def _serving_metrics(self) -> None:
        release = self.served.release
        self.metrics.serving(release.model_name, release.version, release.model_digest)

    def _segment_written(self, body: dict[str, Any]) -> None:
        self.recorder.segment(body)
        if isinstance(self.limiter, MemoryLimiter):
            self.limiter.save()
        self.extraction.save()

    def check_reload(self) -> bool:
        """One poll: loads the registry's prod if it moved. Returns whether it switched."""
        from aegis.registry.tags import read_registry

        stamp = _stamp(self._log_path)
        if stamp == self._watch_stamp or not self.reloads:
            return False
        try:
            self._watch_ledger.refresh()
            version = read_registry(self._watch_ledger, self.target.model).resolve(self.target)
        except AegisError as exc:  # mid-change or tampered: try again at the next change
            log.info("registry not readable now: %s", exc)
            self._watch_stamp = stamp
            return False
        self._watch_stamp = stamp
        current = self.served.release
        if version.version == current.version:
            return False
        target = Target(model=self.target.model, version=version.version)
        try:
            served = load_served(self._watch_ledger, target)
        except Exception as exc:  # refused (AegisError) or unloadable: never served
            # tried again at the next audit change, not every poll: a release that will
            # not load would otherwise be re-verified twice a second
            self.metrics.reloads.labels(result="refused").inc()
            key = (version.version, str(exc))
            if key not in self._refused:
                self._refused.add(key)
                self.recorder.alert(
                    "reload", f"{target} is prod but was not loaded ({exc}); still serving "
                    f"{current}", refused=str(target), serving=str(current),
                )  # fmt: skip
            return False
        self.served = served
        self.predlog.params = served.params
        self._serving_metrics()
        self.metrics.reloads.labels(result="loaded").inc()
        log.warning("now serving %s (was %s)", served.release, current)
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self.served.params.reload_interval):
            try:
                self.check_reload()
            except Exception:  # the watcher must outlive any one bad poll
                log.exception("reload poll failed")
            try:  # a changed history is saved within seconds, new segments or not
                self.extraction.save()
            except Exception:
                log.exception("extraction state not saved")
            self.events.send()  # off the request path; a failure keeps them queued

    def close(self) -> None:
        """Stops the watcher, writes the buffered log and the counters."""
        self._stop.set()
        self._watcher.join(timeout=10)
        self.predlog.close()
        self.limiter.close()
        self.extraction.close()
        self.events.send(force=True)


__all__ = ["EMPTY", "MAX_BODY", "Gateway", "GatewayConfig", "GatewayError"]
