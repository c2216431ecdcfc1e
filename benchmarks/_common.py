"""Helpers shared by the benchmark scripts: quiet environment, machine facts, JSON results.

Not a benchmark itself (the leading underscore keeps ``make bench`` from
running it). The scripts import it as ``_common`` because Python puts
``benchmarks/`` first on ``sys.path`` when a script there is run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

QUIET_ENV = {
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
MB = 1_000_000  # throughputs are decimal megabytes per second


def quiet_environment() -> None:
    """Analytics off for this process and every subprocess it starts."""
    os.environ.update(QUIET_ENV)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _mem_total_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        proc = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        )
        return proc.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def machine_facts() -> dict[str, Any]:
    """What a reader needs to compare this result with another machine's."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "cpu_model": _cpu_model(),
        "mem_total_mb": _mem_total_mb(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": {
            d: _version(d)
            for d in ("aegis", "prefect", "dvc", "model-signing", "pyarrow", "cryptography")
        },
        "project_git": _git_state(),
    }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Runs ``fn`` once; returns (wall seconds, its result)."""
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def summary(seconds: list[float]) -> dict[str, float]:
    """Best, median and worst of repeated wall times."""
    return {
        "best_s": min(seconds),
        "median_s": statistics.median(seconds),
        "worst_s": max(seconds),
    }


def write_result(script: str, result: dict[str, Any]) -> Path:
    """Writes ``benchmarks/results/<script>.json`` and returns its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{script}.json"
    document = {
        "benchmark": script,
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_facts(),
        **result,
    }
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    return path
