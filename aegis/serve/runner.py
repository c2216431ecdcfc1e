"""``aegis serve``: check everything, then hand the socket to uvicorn.

Everything that can refuse is checked in the calling process, before a port opens:
the ledger, the serving key, the verified prod, the client list, the port. With one
worker that process serves (limits in memory, kept across restarts in
``.aegis/serve/counters.json``); with ``--workers N`` uvicorn starts N processes that
each verify and load again, and the limits live in Redis (``--redis``), because a
per-worker count would multiply every limit by N.
"""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from aegis.errors import UsageError
from aegis.fileutil import ensure_dir
from aegis.ledger import Ledger
from aegis.registry.seal import is_sealed_export
from aegis.registry.targets import parse_target
from aegis.serve.clients import load_clients
from aegis.serve.records import load_serving_key, serve_dir
from aegis.serve.served import ServedModel, load_sealed, load_served
from aegis.workspace import Workspace


@dataclass(frozen=True)
class ServePlan:
    """What ``aegis serve`` is about to do (printed before it starts)."""

    target: str
    served: ServedModel
    url: str
    workers: int
    limits: str
    clients: int
    sealed: bool = False  # a sealed export, decrypted at start: no hot reload


def default_target(ws: Workspace) -> str:
    params = ws.params()
    names = params.pipeline.datasets
    model = params.train.model_name or (f"{names[0]}-model" if names else None)
    if model is None:
        raise UsageError("no TARGET given and params.yaml names no model (train.model_name)")
    return f"{model}#prod"


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror})") from None


def plan(
    ws: Workspace, *, target: str | None, host: str, port: int, workers: int,
    key: Path | None, redis: str | None, identity: Path | None = None,
) -> tuple[ServePlan, Ledger]:  # fmt: skip
    """Every check ``aegis serve`` makes before it opens a port.

    With ``identity``, ``target`` is a sealed export's directory, decrypted in memory
    (:func:`aegis.serve.served.load_sealed`) and served without hot reload.

    Raises:
        UsageError: Bad workers/port, ``--workers`` > 1 without ``--redis`` (or with a
            sealed export), the port is taken, no serving key.
        RefusedError: The serving key's role, any verification check of the release,
            ``seal``, the client list (``api-clients``).
    """
    if not 1 <= workers <= 64:
        raise UsageError(f"--workers {workers}: 1 to 64")
    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port}: 1 to 65535")
    if workers > 1 and not redis:
        raise UsageError(
            "--workers > 1 needs --redis URL: limits counted per worker would let a client "
            "through N times its limit"
        )
    if identity is not None and (target is None or workers > 1):
        raise UsageError(
            "--identity serves a sealed export: give its directory as TARGET, with one worker"
        )
    if identity is None and target and is_sealed_export(Path(target)):
        raise UsageError(f"{target} is a sealed export: serve it with --identity IDENTITY_FILE")
    text = target or default_target(ws)
    parsed = None if identity is not None else parse_target(text)
    ledger = Ledger.load(ws)
    load_serving_key(ledger, key)
    if parsed is None:
        served = load_sealed(ledger, Path(text), identity)  # type: ignore[arg-type]
        text = str(served.release)  # a fixed version: what was decrypted
    else:
        served = load_served(ledger, parsed)
    clients = load_clients(ledger)
    _check_port(host, port)
    shown = f"[{host}]" if ":" in host else host
    return ServePlan(
        target=text, served=served, url=f"http://{shown}:{port}", workers=workers,
        limits=f"Redis {redis}" if redis else "in memory",
        clients=sum(c.status == "active" for c in clients.clients), sealed=parsed is None,
    ), ledger  # fmt: skip


def run(ws: Workspace, serve_plan: ServePlan, *, host: str, port: int, key: Path,
        redis: str | None) -> None:  # fmt: skip
    """Serves until SIGINT/SIGTERM (uvicorn's handlers; the gateway flushes on the way out)."""
    import uvicorn

    from aegis.serve.app import CONFIG_ENV, create_app
    from aegis.serve.gateway import Gateway, GatewayConfig

    config = GatewayConfig(
        workspace=str(ws.root), target=serve_plan.target, key=str(key.resolve()), redis=redis,
        reload=not serve_plan.sealed,
    )  # fmt: skip
    common = {"host": host, "port": port, "log_level": "warning", "access_log": False}
    if serve_plan.workers == 1:
        from aegis.serve.tuning import tune_memory

        tune_memory()
        gateway = Gateway(config, served=serve_plan.served)
        uvicorn.Server(uvicorn.Config(create_app(gateway), **common)).run()
        return
    # checked one component at a time first: rmtree under a planted symlink would delete
    # whatever it points to
    metrics_dir = ensure_dir(ws.root, serve_dir(ws) / "metrics")
    shutil.rmtree(metrics_dir)  # a previous run's worker files
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ[CONFIG_ENV] = config.to_env()
    uvicorn.run("aegis.serve.app:app_from_env", factory=True, workers=serve_plan.workers, **common)
