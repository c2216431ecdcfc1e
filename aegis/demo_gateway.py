"""The demo's gateway steps: serve prod, call it as a client, roll back under traffic, revoke.

Kept apart from :mod:`aegis.demo` (the story) because it runs a server: ``aegis serve``
in a subprocess on a free 127.0.0.1 port, stopped by PID when the steps end.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from aegis.errors import RefusedError


class GatewayDemoFailed(RefusedError):
    default_check = "demo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, token: str | None, body: dict | None = None) -> tuple[int, dict]:
    """One request; (status, JSON answer)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@contextlib.contextmanager
def gateway(ws: Path, key: Path, *, say: Callable[[str], None]) -> Iterator[str]:
    """``aegis serve`` for the demo; yields its URL once ``/readyz`` answers."""
    port = _free_port()
    args = [sys.executable, "-m", "aegis", "--workspace", str(ws), "serve", "--port", str(port)]
    say(f"$ aegis serve --port {port} --key {key}")
    proc = subprocess.Popen(
        [*args, "--key", str(key)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise GatewayDemoFailed(f"aegis serve exited: {proc.stderr.read().strip()}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url + "/readyz", timeout=1).close()
                break
            if time.monotonic() > deadline:
                raise GatewayDemoFailed("aegis serve did not become ready in 120 s")
            time.sleep(0.2)
        say(proc.stdout.readline().strip())
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def sample_rows(side: Path, n: int = 4) -> list[list[float]]:
    """A few rows of the supplier's raw digits, as a client would send them."""
    import pandas as pd

    frame = pd.read_parquet(next((side / "raw").glob("*.parquet")))
    return frame.drop(columns=["label"]).head(n).to_numpy(dtype=float).tolist()


def wait_for_version(url: str, token: str, version: str, *, timeout: float = 30) -> float:
    """Seconds until the gateway answers with ``version`` (counting failed answers: none)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status, body = call(url + "/v1/model", token)
        if status != 200:
            raise GatewayDemoFailed(f"/v1/model answered {status} during the switch")
        if body.get("version") == version:
            return time.monotonic() - started
        time.sleep(0.1)
    raise GatewayDemoFailed(f"the gateway did not switch to {version} in {timeout:.0f} s")


def wait_for_logged(ws: Path, rows: int, *, timeout: float = 30) -> None:
    """Until the gateway's signed segment index holds ``rows`` rows (it flushes every
    ``serve.log_flush_s``): what the monitor reads."""
    index = ws / ".aegis" / "serve" / "log" / "segments.jsonl"
    deadline = time.monotonic() + timeout
    while True:
        logged = 0
        if index.is_file():
            for line in index.read_text().splitlines():
                logged += int(json.loads(line)["body"].get("rows", 0))
        if logged >= rows:
            return
        if time.monotonic() > deadline:
            raise GatewayDemoFailed(
                f"the gateway logged {logged} of {rows} rows in {timeout:.0f} s"
            )
        time.sleep(0.2)
