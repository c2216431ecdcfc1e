"""The serving gateway: overhead over a bare endpoint, load with limits, hot reload, detector.

What is measured
    Set-up (not timed): ``bench_registry``'s workspace (digits, two signed releases, v1
    in prod, v2's promotion approved but not completed), a ``serving`` key and API
    clients. Every server is a real uvicorn process on 127.0.0.1: the gateway is
    ``aegis serve`` (auth, limits, validation, the feature-squeezing detector, metrics,
    the prediction log, all at their defaults); the **baseline** is
    ``_bare_app.py``, a bare FastAPI endpoint serving the same verified model (JSON,
    preprocessing, one forward pass, argmax), both started side by side in this run.

    (S) Sequential: one keep-alive connection per server, 1-row requests of real
        digits rows, ``--rounds`` rounds of ``--requests`` requests per server (after
        a warm-up), the servers taken in alternating order each round; p50 and p99 of
        the pooled latencies and per round. 64-row requests beside (no goal).
    (L) Load (``_serve_load.py``, its own process: 50 closed-loop clients on
        keep-alive connections, ``--duration`` seconds each): bare and the gateway
        with valid keys only, in ``--throughput-rounds`` alternating rounds sharing
        the duration (the throughput goal: the median of the rounds' ratios; each
        server's CPU time per request beside); the gateway with valid and over-limit
        keys mixed (40 clients on four valid keys, 5 on a key limited to 20 rows/s,
        5 sending 3-row requests on a key with a quota of 500 rows/day): statuses,
        rows let through per limited key against its limit, the gateway's RSS sampled
        every second, the prediction log's size; then the same mix on
        ``--workers 2 --redis`` (a Redis the benchmark starts), limits counted across
        both workers.
    (R) Hot reload under load, ``--reload-repeats`` times on fresh copies of the
        workspace: 50 clients on valid keys; ``aegis promote`` completes v2, then
        ``aegis rollback`` returns to v1 (both the real CLI, in subprocesses). Failed
        requests (any answer but 200, or a broken connection) and the switch time:
        from the change's ``*.done`` audit entry (the goal; the registry change is
        committed then) and from the command's exit (beside) to the moment the last
        client's answers carry the new version.
    (D) The detector (``_serve_detector.run``): detection and false-positive rates
        against PGD-20 and APGD-CE at the training eps, seeds 0-4, with a confidence
        baseline.

Why
    Issue 13's goals: the gateway adds <= 1 ms p50 and <= 3 ms p99 sequentially; under
    50 clients 0 5xx, 0 rows past a limit, throughput >= 0.8x bare, memory bounded;
    0 failed requests and a switch <= 2 s during a hot reload; the detector's rates.

Run: ``.venv/bin/python benchmarks/bench_serve.py [--duration 60] [--quick]``.
Writes ``benchmarks/results/bench_serve.json`` (``bench_serve-quick.json``). Nothing is
asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from _common import ROOT, quiet_environment, write_result

quiet_environment()
sys.path.insert(0, str(ROOT / "tests"))

BENCH = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
CLIENTS = 50
VALID_KEYS = [f"load-{i}" for i in range(4)]
METERED_RATE = 20  # rows per second
CAPPED_QUOTA, CAPPED_ROWS = 500, 3  # rows per day; rows per request
# (scopes, rate, quota): limits that never bind, then the two over-limit keys per mix
LIMITS = {
    **{name: ("predict", "1000000/s", "1000000000/day") for name in ["seq", *VALID_KEYS]},
    **{f"metered-{mix}": ("predict", f"{METERED_RATE}/s", "1000000000/day")
       for mix in ("w1", "w2")},
    **{f"capped-{mix}": ("predict", "1000000/s", f"{CAPPED_QUOTA}/day") for mix in ("w1", "w2")},
}  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=60, help="seconds per load run")
    parser.add_argument("--rounds", type=int, default=5, help="sequential rounds")
    parser.add_argument("--requests", type=int, default=400, help="requests per round")
    parser.add_argument("--reload-repeats", type=int, default=5)
    parser.add_argument("--throughput-rounds", type=int, default=5,
                        help="alternating bare/gateway rounds sharing --duration")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--quick", action="store_true", help="short runs, 2 detector seeds")
    parser.add_argument("--no-detector", action="store_true", help="skip part (D)")
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temp directory")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds, args.requests = 15, 3, 200
        args.reload_repeats, args.seeds, args.throughput_rounds = 2, [0, 1], 3
    return args


# --- set-up -------------------------------------------------------------------


def build(base: Path) -> SimpleNamespace:
    """The served workspace: bench_registry's template, a serving key, the clients."""
    from bench_registry import build_template

    from aegis.serve.client_ops import new_client
    from aegis.serve.clients import parse_limit, parse_scopes
    from aegis.trust_ops import new_key
    from aegis.workspace import find_workspace

    paths = build_template(base)
    ws = find_workspace(paths["root"])
    serving = base / "keys" / "serving.pem"
    new_key(ws, role="serving", name="gateway", owner="platform", out=serving,
            admin_key=base / "keys" / "admin.pem")  # fmt: skip
    tokens = {}
    for name, (scopes, rate, quota) in LIMITS.items():
        made = new_client(
            ws, name=name, scopes=parse_scopes(scopes), rate=parse_limit(rate, what="rate"),
            quota=parse_limit(quota, what="quota"), key_path=paths["operator"],
        )  # fmt: skip
        tokens[name] = made.token
    return SimpleNamespace(root=paths["root"], serving_key=serving,
                           operator=paths["operator"], tokens=tokens)  # fmt: skip


def digits_rows(n: int = 200) -> list[list[float]]:
    """Real digits rows in the dataset's units (pixels 0-16)."""
    from sklearn.datasets import load_digits

    return load_digits().data[-n:].tolist()


class BareServer:
    """``_bare_app.py`` in a subprocess, stopped by PID."""

    def __init__(self, root: Path) -> None:
        from services import free_port, wait_http

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "_bare_app.py"), str(root), str(self.port)],
            stdout=subprocess.DEVNULL,
        )
        wait_http(self.url + "/readyz", self.proc, 120)

    def stop(self) -> None:
        from services import stop

        stop(self.proc)


# --- (S) sequential -------------------------------------------------------------


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": round(pick(0.5), 3), "p99_ms": round(pick(0.99), 3), "n": len(values)}


def _sequential(url: str, token: str | None, bodies: list[bytes], n: int) -> list[float]:
    """Latencies (ms) of ``n`` requests on one keep-alive connection."""
    port = int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    out = []
    try:
        for i in range(n):
            began = time.perf_counter()
            conn.request("POST", "/v1/predict", bodies[i % len(bodies)], headers)
            response = conn.getresponse()
            response.read()
            out.append((time.perf_counter() - began) * 1000)
            if response.status != 200:
                raise RuntimeError(f"{url}: sequential request answered {response.status}")
    finally:
        conn.close()
    return out


def sequential(bare: str, gateway: str, token: str, rows, args) -> dict[str, Any]:
    """(S): pooled and per-round p50/p99 of both servers, 1-row and 64-row requests."""
    out: dict[str, Any] = {}
    for size, requests in ((1, args.requests), (64, max(50, args.requests // 4))):
        bodies = [json.dumps({"inputs": rows[i : i + size]}).encode()
                  for i in range(0, len(rows) - size + 1, max(1, size // 4))][:50]  # fmt: skip
        pooled: dict[str, list[float]] = {"bare": [], "gateway": []}
        rounds = []
        for r in range(args.rounds):
            order = [("bare", bare, None), ("gateway", gateway, token)]
            this = {}
            for side, url, tok in order if r % 2 == 0 else order[::-1]:
                _sequential(url, tok, bodies, 50)  # warm-up
                this[side] = _sequential(url, tok, bodies, requests)
                pooled[side] += this[side]
            b, g = _percentiles(this["bare"]), _percentiles(this["gateway"])
            rounds.append({"bare": b, "gateway": g,
                           "added_p50_ms": round(g["p50_ms"] - b["p50_ms"], 3),
                           "added_p99_ms": round(g["p99_ms"] - b["p99_ms"], 3)})  # fmt: skip
        b, g = _percentiles(pooled["bare"]), _percentiles(pooled["gateway"])
        out[f"rows_{size}"] = {
            "bare": b, "gateway": g,
            "added_p50_ms": round(g["p50_ms"] - b["p50_ms"], 3),
            "added_p99_ms": round(g["p99_ms"] - b["p99_ms"], 3),
            "rounds": rounds,
        }  # fmt: skip
    return out


# --- (L) load -------------------------------------------------------------------


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its children (uvicorn's workers)."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def run_load(
    plan: dict, tmp: Path, *, during=None, server_pid: int | None = None
) -> dict[str, Any]:
    """Runs ``_serve_load.py`` on ``plan``.

    ``during()`` runs in this process meanwhile; with it, the load ends when it returns
    (a stop file), and its result is kept under ``"during"``. With ``server_pid``, the
    server's CPU time per answered request is reported beside (and the load
    generator's: both share this machine's cores).
    """
    import resource

    before = _cpu_s(server_pid) if server_pid else None
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    path, stop_file = tmp / "plan.json", tmp / "stop-load"
    stop_file.unlink(missing_ok=True)
    if during is not None:
        plan = {**plan, "stop_file": str(stop_file)}
    path.write_text(json.dumps(plan))
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "_serve_load.py"), str(path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        extra = during() if during is not None else None
    finally:
        stop_file.touch()
        out, _ = proc.communicate(timeout=plan["duration_s"] + 600)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode})")
    result = json.loads(out)
    result["totals"] = _totals(result["groups"], result["elapsed_s"])
    if before is not None:
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        answered = max(1, result["totals"]["answered"])
        loadgen = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
        server = _cpu_s(server_pid) - before
        result["cpu"] = {
            "server_s": round(server, 2),
            "server_us_per_request": round(server / answered * 1e6, 1),
            "load_generator_us_per_request": round(loadgen / answered * 1e6, 1),
        }
    return result if extra is None else {**result, "during": extra}


def _totals(groups: dict[str, Any], elapsed: float) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for g in groups.values():
        for k, v in g["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    answered = sum(statuses.values())
    return {
        "statuses": statuses,
        "answered": answered,
        "per_s": round(answered / elapsed, 1),
        "ok_per_s": round(statuses.get("200", 0) / elapsed, 1),
        "5xx": sum(v for k, v in statuses.items() if k.startswith("5")),
        "errors": sum(g["errors"] for g in groups.values()),
    }


def plan_of(url: str, groups: list[tuple[str, int, str | None, int]], rows, duration: float):
    return {
        "url": url, "path": "/v1/predict", "duration_s": duration, "rows": rows,
        "groups": [{"name": n, "clients": c, "token": t, "rows": r} for n, c, t, r in groups],
    }  # fmt: skip


def valid_groups(tokens: dict[str, str], clients: int) -> list:
    per = clients // len(VALID_KEYS)
    return [(name, per, tokens[name], 1) for name in VALID_KEYS]


def mixed_groups(tokens: dict[str, str], mix: str) -> list:
    return [
        *valid_groups(tokens, CLIENTS - 10),
        (f"metered-{mix}", 5, tokens[f"metered-{mix}"], 1),
        (f"capped-{mix}", 5, tokens[f"capped-{mix}"], CAPPED_ROWS),
    ]


def limit_check(result: dict[str, Any], mix: str) -> dict[str, Any]:
    """Rows each limited key was let through against what its limit allows."""
    metered = result["groups"][f"metered-{mix}"]
    capped = result["groups"][f"capped-{mix}"]
    # fixed one-second windows: a run of T seconds touches at most ceil(T) + 1 of them
    windows = math.ceil(result["elapsed_s"]) + 1
    allowed_metered = METERED_RATE * windows
    return {
        "metered": {"rows_ok": metered["rows_ok"], "allowed_at_most": allowed_metered,
                    "past_limit": max(0, metered["rows_ok"] - allowed_metered),
                    "statuses": metered["statuses"]},
        "capped": {"rows_ok": capped["rows_ok"], "quota": CAPPED_QUOTA,
                   "past_limit": max(0, capped["rows_ok"] - CAPPED_QUOTA),
                   "statuses": capped["statuses"]},
    }  # fmt: skip


class RssSampler:
    """Samples the RSS (MB) of a process and its children every second, in a thread."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rss(self) -> float:
        import psutil

        total = 0
        for proc in [self.root, *self.root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total / 1e6

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.samples.append(round(self._rss(), 1))

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        s = self.samples
        half = len(s) // 2
        first, second = max(s[: max(1, half)]), max(s[half:] or s)
        return {"samples_mb": s, "max_first_half_mb": first, "max_second_half_mb": second,
                "growth_second_half": round(second / first - 1, 4)}  # fmt: skip


def log_bytes(root: Path) -> int:
    log = root / ".aegis" / "serve" / "log"
    return sum(p.stat().st_size for p in log.rglob("*") if p.is_file()) if log.exists() else 0


def throughput_rounds(ctx: SimpleNamespace, rows, args, tmp: Path) -> list[dict[str, Any]]:
    """Bare and the gateway (valid keys) in alternating rounds, both servers up throughout.

    Alternating spreads this machine's drift (other tenants, CPU boost) over both
    servers: each round's ratio compares runs seconds apart.
    """
    from serve_helpers import Gateway

    bare, gateway = BareServer(ctx.root), Gateway(ctx, workers=1)
    seconds = args.duration / args.throughput_rounds
    out = []
    try:
        for _ in range(args.throughput_rounds):
            b = run_load(plan_of(bare.url, [("bare", CLIENTS, None, 1)], rows, seconds), tmp,
                         server_pid=bare.proc.pid)  # fmt: skip
            g = run_load(plan_of(gateway.url, valid_groups(ctx.tokens, CLIENTS), rows, seconds),
                         tmp, server_pid=gateway.proc.pid)  # fmt: skip
            out.append({
                "bare_per_s": b["totals"]["ok_per_s"], "gateway_per_s": g["totals"]["ok_per_s"],
                "ratio": round(g["totals"]["ok_per_s"] / b["totals"]["ok_per_s"], 3),
                "bare_5xx": b["totals"]["5xx"] + b["totals"]["errors"],
                "gateway_5xx": g["totals"]["5xx"] + g["totals"]["errors"],
                "bare_p99_ms": max(x["p99_ms"] for x in b["groups"].values()),
                "gateway_p99_ms": max(x["p99_ms"] for x in g["groups"].values()),
                "bare_cpu": b["cpu"], "gateway_cpu": g["cpu"],
            })  # fmt: skip
    finally:
        bare.stop()
        gateway.stop()
    return out


def load_runs(ctx: SimpleNamespace, rows, args, tmp: Path) -> dict[str, Any]:
    """(L): bare, gateway with valid keys, the mix on one worker, the mix on two + Redis."""
    from serve_helpers import Gateway, start_redis
    from services import stop

    out: dict[str, Any] = {"throughput_rounds": throughput_rounds(ctx, rows, args, tmp)}
    for mix, workers in (("w1", 1), ("w2", 2)):
        redis_proc = redis = None
        if workers > 1:
            redis_proc, redis = start_redis(tmp)
        gateway = Gateway(ctx, workers=workers, redis=redis)
        try:
            sampler = RssSampler(gateway.proc.pid)
            result = run_load(
                plan_of(gateway.url, mixed_groups(ctx.tokens, mix), rows, args.duration), tmp
            )
            result["rss"] = sampler.stop()
            result["limits"] = limit_check(result, mix)
        finally:
            gateway.stop()
            if redis_proc is not None:
                stop(redis_proc)
        result["log_store_bytes"] = log_bytes(ctx.root)
        out[f"gateway_mixed_{mix}"] = result
    return out


# --- (R) hot reload -------------------------------------------------------------


def _aegis(root: Path, *args: str) -> float:
    """Runs the CLI in ``root``; returns the wall time (time.time()) it exited."""
    proc = subprocess.run([str(BIN / "aegis"), *args], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"aegis {args[0]} failed: {proc.stderr.strip()}")
    return time.time()


def _switch_s(groups: dict[str, Any], version: str, *, after: float, since: float) -> float | None:
    """From ``after`` until every client's answers carried ``version`` (again, after ``since``).

    Negative when the gateway served it before the command had exited (the registry
    change is committed before the CLI's own exit).
    """
    firsts = []
    for g in groups.values():
        for switches in g["switches"]:
            times = [t for t, v in switches if v == version and t > since]
            if not times:
                return None
            firsts.append(min(times))
    return round(max(firsts) - after, 3)


def _done_times(root: Path) -> dict[str, float]:
    """The time of the last ``promote.done`` and ``rollback.done`` in ``root``'s audit log.

    The registry change is committed when that entry is written; the CLI exits later
    (it prints, releases locks, and its interpreter shuts down).
    """
    from aegis.timeutil import parse_utc
    from aegis.workspace import Workspace

    times = {}
    for line in (Workspace(root).audit_dir / "log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry["action"] in ("promote.done", "rollback.done"):
            times[entry["action"]] = parse_utc(entry["time"]).timestamp()
    return times


def reload_runs(ctx: SimpleNamespace, rows, args, tmp: Path) -> list[dict[str, Any]]:
    """(R): promote then roll back under 50 clients, on fresh copies of the workspace."""
    from serve_helpers import Gateway

    out = []
    for repeat in range(args.reload_repeats):
        copy = tmp / f"reload-{repeat}"
        shutil.copytree(ctx.root, copy, symlinks=True)
        shutil.rmtree(copy / ".aegis" / "serve", ignore_errors=True)
        here = SimpleNamespace(root=copy, serving_key=ctx.serving_key)
        gateway = Gateway(here, workers=1)

        def during(copy=copy) -> dict[str, float]:
            time.sleep(6)
            promoted = _aegis(copy, "promote", "digits-model@v2", "--key", str(ctx.operator))
            time.sleep(6)
            rolled = _aegis(copy, "rollback", "--to", "digits-model@v1", "--reason",
                            "bench: reload under load", "--key", str(ctx.operator))  # fmt: skip
            time.sleep(4)
            return {"promoted_at": promoted, "rolled_back_at": rolled}

        try:
            result = run_load(
                plan_of(gateway.url, valid_groups(ctx.tokens, CLIENTS), rows, 300), tmp,
                during=during,
            )  # fmt: skip
        finally:
            gateway.stop()
        t = result["during"]
        done = _done_times(copy)
        totals = result["totals"]
        out.append({
            "failed": totals["answered"] - totals["statuses"].get("200", 0) + totals["errors"],
            "answered": totals["answered"],
            "seconds": result["elapsed_s"],
            "promote_switch_s": _switch_s(result["groups"], "v2.0.0", after=t["promoted_at"],
                                          since=result["started_at"]),
            "rollback_switch_s": _switch_s(result["groups"], "v1.0.0",
                                           after=t["rolled_back_at"], since=t["promoted_at"]),
            "promote_switch_from_audit_s": _switch_s(result["groups"], "v2.0.0",
                                                     after=done["promote.done"],
                                                     since=result["started_at"]),
            "rollback_switch_from_audit_s": _switch_s(result["groups"], "v1.0.0",
                                                      after=done["rollback.done"],
                                                      since=t["promoted_at"]),
        })  # fmt: skip
        shutil.rmtree(copy, ignore_errors=True)
    return out


# --- goals ----------------------------------------------------------------------


def _goal(value, ok: bool, goal: str) -> dict[str, Any]:
    return {"value": value, "goal": goal, "met": bool(ok)}


def goals(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    s = result["sequential"]["rows_1"]
    out["sequential_added_p50"] = _goal(s["added_p50_ms"], s["added_p50_ms"] <= 1.0,
                                        "<= 1.0 ms over bare (pooled, 1-row requests)")  # fmt: skip
    out["sequential_added_p99"] = _goal(s["added_p99_ms"], s["added_p99_ms"] <= 3.0,
                                        "<= 3 ms over bare (pooled, 1-row requests)")  # fmt: skip
    load = result["load"]
    rounds = load["throughput_rounds"]
    ratio = round(statistics.median(r["ratio"] for r in rounds), 3)
    out["throughput_vs_bare"] = _goal(
        ratio, ratio >= 0.8, ">= 0.8x bare, 50 clients, valid keys (median of alternating rounds)"
    )
    for mix in ("w1", "w2"):
        r = load[f"gateway_mixed_{mix}"]
        past = r["limits"]["metered"]["past_limit"] + r["limits"]["capped"]["past_limit"]
        bad = r["totals"]["5xx"] + r["totals"]["errors"]
        out[f"mixed_{mix}_no_5xx"] = _goal(bad, bad == 0, "0 5xx or broken connections")
        out[f"mixed_{mix}_past_limit"] = _goal(past, past == 0, "0 rows past a rate or quota")
        growth = r["rss"]["growth_second_half"]
        out[f"mixed_{mix}_memory"] = _goal(
            {"growth": growth, "max_mb": r["rss"]["max_second_half_mb"]}, growth <= 0.05,
            "RSS bounded: the second half's peak <= 1.05x the first half's",
        )  # fmt: skip
    reloads = result["reload"]
    failed = sum(r["failed"] for r in reloads)
    switches = [
        r[k] for r in reloads
        for k in ("promote_switch_from_audit_s", "rollback_switch_from_audit_s")
    ]  # fmt: skip
    worst = None if None in switches else max(switches)
    out["reload_failed"] = _goal(failed, failed == 0, "0 failed requests during the switches")
    out["reload_switch"] = _goal(
        worst, worst is not None and worst <= 2.0,
        "every switch <= 2 s after the change's audit entry (worst)",
    )  # fmt: skip
    return out


def main() -> None:
    args = parse_args()
    from _digits import quiet_warnings
    from serve_helpers import Gateway

    quiet_warnings()
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-", dir=args.tmp))
    began = time.perf_counter()
    try:
        print("building the served workspace ...", flush=True)
        ctx = build(tmp / "base")
        rows = digits_rows()
        result: dict[str, Any] = {
            "seeds": args.seeds,
            "settings": {"duration_s": args.duration, "clients": CLIENTS, "rounds": args.rounds,
                         "requests_per_round": args.requests,
                         "reload_repeats": args.reload_repeats,
                         "throughput_rounds": args.throughput_rounds,
                         "limits": {k: v[1:] for k, v in LIMITS.items()}},
            "baseline": "benchmarks/_bare_app.py: bare FastAPI endpoint, same model, same run",
        }  # fmt: skip
        print("(S) sequential ...", flush=True)
        bare, gateway = BareServer(ctx.root), Gateway(ctx)
        try:
            result["sequential"] = sequential(bare.url, gateway.url, ctx.tokens["seq"], rows, args)
        finally:
            bare.stop()
            gateway.stop()
        print("(L) load ...", flush=True)
        result["load"] = load_runs(ctx, rows, args, tmp)
        print("(R) hot reload ...", flush=True)
        result["reload"] = reload_runs(ctx, rows, args, tmp)
        result["goals"] = goals(result)
        if not args.no_detector:
            print("(D) detector ...", flush=True)
            import _serve_detector

            result["detector"] = _serve_detector.run(args.seeds)
            result["goals"].update(_serve_detector.goals(result["detector"]))
        result["seconds"] = round(time.perf_counter() - began, 1)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    path = write_result("bench_serve" + ("-quick" if args.quick else ""), result)
    for name, goal in result["goals"].items():
        verdict = "met    " if goal["met"] else "NOT MET"
        print(f"{verdict} {name}: {goal['value']} ({goal['goal']})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
