"""bench_serve's baseline: a bare FastAPI endpoint serving the same prod model.

Not a benchmark itself (the leading underscore keeps ``make bench`` from running it).
Run as ``python _bare_app.py WORKSPACE PORT``: it loads prod once through the same
verified load as the gateway (not timed), then answers ``POST /v1/predict``
(``{"inputs": [[...], ...]}`` -> ``{"labels": [...]}``) with what any minimal model
server does per request: parse the JSON, apply the checkpoint's preprocessing, one
forward pass, argmax. No authentication, limits, validation, detector, metrics or log:
the difference to the gateway is what those cost. Same uvicorn settings as
``aegis serve`` (one worker, h11, no access log), one torch thread.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

from aegis.ledger import Ledger
from aegis.registry.targets import parse_target
from aegis.serve.runner import default_target
from aegis.serve.served import load_served, model_inputs
from aegis.workspace import find_workspace


def create_bare_app(root: Path) -> FastAPI:
    """The baseline app over ``root``'s prod model."""
    ws = find_workspace(root)
    served = load_served(Ledger.load(ws), parse_target(default_target(ws)))
    model, spec = served.loaded.model, served.loaded.spec
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/predict")
    async def predict(request: Request) -> Response:
        rows = np.asarray((await request.json())["inputs"], dtype=np.float64)
        with torch.no_grad():
            logits = model(torch.from_numpy(model_inputs(rows, spec)))
        body = json.dumps({"labels": logits.argmax(dim=1).tolist()}).encode()
        return Response(body, media_type="application/json")

    @app.get("/readyz")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    return app


if __name__ == "__main__":
    app = create_bare_app(Path(sys.argv[1]))
    config = uvicorn.Config(
        app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False
    )
    uvicorn.Server(config).run()
