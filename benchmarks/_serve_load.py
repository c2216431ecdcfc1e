"""bench_serve's load generator: closed-loop HTTP/1.1 clients on keep-alive connections.

Not a benchmark itself (the leading underscore keeps ``make bench`` from running it).
``bench_serve.py`` runs it in its own process (``python _serve_load.py PLAN.json``) so
that the client's CPU never shares a GIL with the driver's sampling, and reads the JSON
it prints.

Each virtual client holds one connection and sends its next request as soon as the
last answer is read (no think time: the server is never idle while a client waits).
The request bytes are built once; an answer is parsed only as far as its status, its
``Content-Length`` body and, for a 200, the ``version`` the gateway reports (each
client records when its answers change version: a hot reload shows as that moment).
Written on asyncio streams, not httpx: httpx spends about a millisecond of CPU per
request, which on two cores would measure the client rather than the server.

A plan is ``{"url", "path", "duration_s", "groups": [{"name", "clients", "token",
"rows"}], "rows": [[...], ...]}``; every request of a group carries ``rows`` of the
plan's rows (taken in turn). With ``"stop_file"``, the run also ends when that file
appears (``duration_s`` then only bounds it).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


@dataclass
class GroupStats:
    """What the clients of one group saw."""

    statuses: Counter = field(default_factory=Counter)
    rows_ok: int = 0
    errors: int = 0  # connection failures and unreadable answers
    latencies_ms: list[float] = field(default_factory=list)
    # per client: [wall time (time.time()), version] each time its answers change version
    switches: list[list[list]] = field(default_factory=list)


def _request(host: str, path: str, token: str | None, body: bytes) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
            f"Content-Length: {len(body)}"]  # fmt: skip
    if token:
        head.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def _client(plan: dict, group: dict, index: int, stats: GroupStats, deadline: list):
    split = urlsplit(plan["url"])
    rows = plan["rows"]
    n = group["rows"]
    start = (index * n) % len(rows)
    payloads = []
    for k in range(8):  # a few distinct bodies per client, cycled
        chosen = [rows[(start + k * n + j) % len(rows)] for j in range(n)]
        body = json.dumps({"inputs": chosen}).encode()
        payloads.append(_request(split.netloc, plan["path"], group.get("token"), body))
    reader = writer = None
    sent = 0
    switches: list[list] = []
    stats.switches.append(switches)
    while time.monotonic() < deadline[0]:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(split.hostname, split.port)
            began = time.perf_counter()
            writer.write(payloads[sent % len(payloads)])
            sent += 1
            await writer.drain()
            status, body = await _answer(reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            stats.errors += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
            continue
        stats.latencies_ms.append((time.perf_counter() - began) * 1000)
        stats.statuses[status] += 1
        if status == 200:
            stats.rows_ok += n
            version = json.loads(body).get("version", "")
            if not switches or switches[-1][1] != version:
                switches.append([time.time(), version])
    if writer is not None:
        writer.close()


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _watch(stop_file: Path, deadline: list) -> None:
    while time.monotonic() < deadline[0]:
        if stop_file.exists():
            deadline[0] = time.monotonic()
            return
        await asyncio.sleep(0.1)


async def run_plan(plan: dict) -> dict[str, Any]:
    """Runs ``plan`` (see the module docstring); per-group figures, JSON-able."""
    deadline = [time.monotonic() + plan["duration_s"]]  # shared, so a stop file can end it
    stats = {g["name"]: GroupStats() for g in plan["groups"]}
    began, wall = time.perf_counter(), time.time()
    watch = [_watch(Path(plan["stop_file"]), deadline)] if plan.get("stop_file") else []
    await asyncio.gather(*watch, *(
        _client(plan, group, i, stats[group["name"]], deadline)
        for group in plan["groups"] for i in range(group["clients"])
    ))  # fmt: skip
    elapsed = time.perf_counter() - began
    out: dict[str, Any] = {"started_at": wall, "elapsed_s": round(elapsed, 3), "groups": {}}
    for name, s in stats.items():
        answered = sum(s.statuses.values())
        out["groups"][name] = {
            "answered": answered,
            "per_s": round(answered / elapsed, 1),
            "statuses": {str(k): v for k, v in sorted(s.statuses.items())},
            "rows_ok": s.rows_ok,
            "errors": s.errors,
            "p50_ms": _percentile(s.latencies_ms, 0.50),
            "p99_ms": _percentile(s.latencies_ms, 0.99),
            "switches": s.switches,
        }
    return out


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        print(json.dumps(asyncio.run(run_plan(json.load(handle)))))
