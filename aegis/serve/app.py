"""The HTTP layer of the gateway: routes that move bytes to :class:`Gateway` and back.

Handlers are ``async`` and call the gateway inline: a request is a fraction of a
millisecond of CPU, and a thread hop per request would cost more than it saves. No
Starlette middleware (each costs a task per request): the one timing and counting
wrapper is :func:`_answer`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from aegis.serve.gateway import MAX_BODY, Gateway, GatewayConfig, GatewayError

log = logging.getLogger("aegis.serve")
CONFIG_ENV = "AEGIS_SERVE_CONFIG"


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, separators=(",", ":")).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _refused(gateway: Gateway, exc: GatewayError) -> Response:
    gateway.metrics.refusals.labels(reason=exc.reason).inc()
    return _json({"error": exc.reason, "message": str(exc)}, exc.status, exc.headers)


async def _body(request: Request) -> bytes:
    """The request body, refused (413) past :data:`MAX_BODY` without reading it all."""
    length = request.headers.get("content-length")
    if length is not None and not (length.isascii() and length.isdigit()):
        raise GatewayError(400, "malformed", "Content-Length is not a number")
    if length is not None and int(length) > MAX_BODY:
        raise GatewayError(413, "too-large", f"bodies are at most {MAX_BODY} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise GatewayError(413, "too-large", f"bodies are at most {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(gateway: Gateway | None = None) -> FastAPI:
    """The FastAPI app over ``gateway`` (or one built from ``AEGIS_SERVE_CONFIG`` at startup)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        gw = gateway or Gateway(GatewayConfig.from_env(os.environ[CONFIG_ENV]))
        app.state.gateway = gw
        try:
            yield
        finally:
            gw.close()

    app = FastAPI(
        title="Aegis gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )

    def _answer(endpoint: str, started: float, response: Response) -> Response:
        gw: Gateway = app.state.gateway
        gw.metrics.observe(endpoint, time.perf_counter() - started)
        return response

    async def _posted(endpoint: str, request: Request, handle, status: int = 200) -> Response:
        """An authenticated POST: ``handle(client, body, started)`` answers it."""
        started = time.perf_counter()
        gw: Gateway = app.state.gateway
        try:
            client = gw.authenticate(request.headers.get("authorization"), scope="predict")
            body = await _body(request)
            response = _json(handle(gw, client, body, started), status)
        except GatewayError as exc:
            response = _refused(gw, exc)
        except Exception:  # never a bare 500 page: logged, counted, one JSON line
            log.exception("%s failed", endpoint)
            gw.metrics.refusals.labels(reason="internal").inc()
            response = _json({"error": "internal", "message": "internal error (logged)"}, 500)
        return _answer(endpoint, started, response)

    @app.post("/v1/predict")
    async def predict(request: Request) -> Response:
        return await _posted("predict", request, lambda gw, client, body, started:
                             gw.predict(client, body, started=started))  # fmt: skip

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> Response:
        return await _posted("feedback", request, lambda gw, client, body, _started:
                             gw.feedback(client, body), status=202)  # fmt: skip

    @app.get("/v1/model")
    async def model(request: Request) -> Response:
        started = time.perf_counter()
        gw: Gateway = app.state.gateway
        try:
            gw.authenticate(request.headers.get("authorization"), scope="predict")
            response = _json(gw.served.describe())
        except GatewayError as exc:
            response = _refused(gw, exc)
        return _answer("model", started, response)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        gw: Gateway = app.state.gateway
        try:
            gw.authenticate(request.headers.get("authorization"), scope="admin")
        except GatewayError as exc:
            return _refused(gw, exc)
        data, content_type = gw.metrics.render()
        return Response(data, media_type=content_type)

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        gw: Gateway | None = getattr(app.state, "gateway", None)
        if gw is None or gw.served is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return _json({"status": "ready", "version": gw.served.version})

    return app


def app_from_env() -> FastAPI:
    """uvicorn's factory for ``--workers N``: each worker builds its own gateway."""
    from aegis.serve.tuning import tune_memory

    tune_memory()
    return create_app()
