"""The gateway's Prometheus metrics (``GET /metrics``, admin scope).

With several workers, prometheus_client's multiprocess mode aggregates every worker's
values (``PROMETHEUS_MULTIPROC_DIR``, set by :mod:`aegis.serve.runner` under
``.aegis/serve/metrics/`` before the workers start), so a scrape sees the whole gateway,
not the one worker that answered it.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class GatewayMetrics:
    """The metrics of one gateway process."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "aegis_requests", "Requests by client and status", ["client", "status"], registry=reg
        )
        self.rows = Counter("aegis_rows", "Rows answered by client", ["client"], registry=reg)
        self.latency = Histogram(
            "aegis_request_seconds", "Request latency", ["endpoint"], registry=reg,
            buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.refusals = Counter(
            "aegis_refusals", "Refused requests by reason", ["reason"], registry=reg
        )
        self.adversarial = Counter(
            "aegis_adversarial_flags", "Rows the squeezing detector flagged", ["action"],
            registry=reg,
        )  # fmt: skip
        self.extraction = Counter(
            "aegis_extraction_flags", "Clients the extraction monitor flagged",
            ["client", "signal"], registry=reg,
        )  # fmt: skip
        self.watermarked = Counter(
            "aegis_watermarked_rows", "Rows answered with the watermark's wrong label", registry=reg
        )
        self.reloads = Counter(
            "aegis_model_reloads", "Model reloads by result", ["result"], registry=reg
        )
        gauge = {"multiprocess_mode": "liveall"} if self.multiprocess else {}
        self.model = Gauge(
            "aegis_model_info", "The served model (value 1)", ["model", "version", "digest"],
            registry=reg, **gauge,
        )  # fmt: skip
        self.log_dropped = Counter(
            "aegis_log_dropped_rows", "Prediction-log rows lost", registry=reg
        )

        # labelled children, looked up once: labels() takes a lock and builds a key on
        # every call, a few microseconds the request path need not pay three times
        self._answered: dict[str, tuple[Any, Any]] = {}
        self._latency: dict[str, Any] = {}

    def answered(self, client: str, rows: int) -> None:
        """Counts one answered (200) request of ``rows`` rows."""
        pair = self._answered.get(client)
        if pair is None:
            ok = self.requests.labels(client=client, status="200")
            pair = (ok, self.rows.labels(client=client))
            self._answered[client] = pair
        pair[0].inc()
        pair[1].inc(rows)

    def observe(self, endpoint: str, seconds: float) -> None:
        """Records one request's latency."""
        child = self._latency.get(endpoint)
        if child is None:
            child = self._latency[endpoint] = self.latency.labels(endpoint=endpoint)
        child.observe(seconds)

    def serving(self, model: str, version: str, digest: str) -> None:
        self.model.clear()
        self.model.labels(model=model, version=version, digest=digest[:19]).set(1)

    def render(self) -> tuple[bytes, str]:
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
