"""Overhead of the Prefect ``retrain`` flow over calling the same core functions directly.

What is measured
    One Prefect server is started for the benchmark (its own PREFECT_HOME in a
    temp directory) and this process points PREFECT_API_URL at it. A temp
    workspace gets a supplier key; before every timed run a fresh signed
    dataset of ``--mb`` MB of random Parquet is published (not timed), each
    newer than the last, so the replay check accepts every run.

    Steady state (server up, this process already warm: one untimed run of
    each first), ``--runs`` rounds, the order of the modes rotating each
    round to cancel drift:
      direct: ``aegis.data.ingest.ingest(ws, src, name=, actor=)``
      flow:   ``flows.retrain.retrain(workspace=, source=, name=, actor=)``
      flow_no_heartbeat (diagnostic, ``--no-diagnose`` skips it): the same
              flow with PREFECT_FLOWS_HEARTBEAT_FREQUENCY=None, to show what
              Prefect's heartbeat thread costs (its join at flow exit waits
              for a sleep of up to 1 s); not the goal's number.
    Reported: median seconds of each, overhead = (median flow - median
    direct) / median direct, goal <= 0.10; the median of per-round overheads
    as a cross-check; CPU seconds per run of this process (all threads),
    its subprocesses (git, ``python -m dvc``) and the server's process tree;
    and, from the server's records, how much of each flow run was spent
    inside its task runs versus around them.

    Start-up costs (each in a fresh ``python -c`` subprocess, wall time from
    spawn to exit, plus the child's own import/call split):
      - ``prefect server start`` until /api/health answers;
      - one direct ingest in a fresh process;
      - one flow run in a fresh process against the running server;
      - one flow run in ephemeral mode (no PREFECT_API_URL, a fresh
        PREFECT_HOME: Prefect starts a temporary server and creates its
        database), then once more with the same PREFECT_HOME (what each
        ``aegis run`` without a server costs once the workspace's Prefect
        database exists).

Why
    DESIGN.md: Prefect adds scheduling, retries, the UI and artifacts and
    holds no logic; it should cost little on top of the work itself. Goal:
    flow overhead <= 10% of the run once the server is up. Start-up costs
    are reported for context (no goal).

PREFECT_LOGGING_LEVEL defaults to CRITICAL here, as ``aegis run`` sets it
when not verbose (``--prefect-log-level INFO`` measures with logs shipped
to the server). Run: ``.venv/bin/python benchmarks/bench_flow.py``. Writes
``benchmarks/results/bench_flow.json``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import MB, ROOT, quiet_environment, summary, timed, write_result

quiet_environment()

GOAL_OVERHEAD = 0.10
COLUMNS = 8
PYTHON = sys.executable
PREFECT = str(Path(sys.executable).parent / "prefect")

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
args = json.loads(sys.argv[1])
if args["mode"] == "direct":
    from aegis.data.ingest import ingest
    from aegis.ledger import Ledger
    from aegis.workspace import Workspace
    t1 = time.perf_counter()
    result = ingest(Ledger.load(Workspace(Path(args["workspace"]))), args["source"],
                    name=args["name"], actor=args["actor"])
else:
    from flows.retrain import retrain
    t1 = time.perf_counter()
    result = retrain(workspace=args["workspace"], source=args["source"], name=args["name"],
                     actor=args["actor"])
t2 = time.perf_counter()
print("BENCH " + json.dumps({"import_s": t1 - t0, "call_s": t2 - t1, "digest": result.digest}))
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=7, help="timed rounds (one run of each mode)")
    parser.add_argument("--mb", type=int, default=20, help="MB per dataset (default 20)")
    parser.add_argument(
        "--startup-reps",
        type=int,
        default=2,
        help="fresh-process repeats; 0 skips the fresh-process and ephemeral runs",
    )
    parser.add_argument("--prefect-log-level", default="CRITICAL")
    parser.add_argument(
        "--no-diagnose",
        dest="diagnose",
        action="store_false",
        help="skip the diagnostic third mode (the flow with Prefect's heartbeat thread off)",
    )
    parser.add_argument("--server-timeout", type=float, default=120.0)
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temp directory")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    parser.add_argument(
        "--tag", default="", help="suffix of the result file (bench_flow-TAG.json) for variants"
    )
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``prefect server start`` in its own process group, stopped whatever happens."""

    def __init__(self, home: Path, timeout: float) -> None:
        self.home = home
        self.timeout = timeout
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.proc: subprocess.Popen | None = None
        self.log = None

    def start(self) -> float:
        """Starts the server; returns seconds until /api/health answered."""
        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env["PREFECT_HOME"] = str(self.home)
        self.log = open(self.home / "server.log", "w")  # noqa: SIM115
        start = time.perf_counter()
        self.proc = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stop() reaches uvicorn children too
        )
        deadline = start + self.timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited ({self.proc.returncode}), see log")
            try:
                with urllib.request.urlopen(self.api + "/health", timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"prefect server did not answer in {self.timeout}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(10)
        if self.log is not None:
            self.log.close()

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)  # the group we created, nothing else


class Datasets:
    """Publishes a fresh signed dataset of random Parquet per call (newer each time)."""

    def __init__(self, base: Path, key: Path, mb: int) -> None:
        self.base = base
        self.key = key
        self.mb = mb
        self.count = 0
        self.last_bytes = 0

    def fresh(self, name: str) -> Path:
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        from aegis.data.publish import publish_dataset

        self.count += 1
        raw = self.base / f"raw-{self.count}"
        raw.mkdir(parents=True)
        rng = np.random.default_rng(self.count)
        rows = max(1, self.mb * MB // 2 // (8 * COLUMNS))
        for part in range(2):
            data = rng.random((COLUMNS, rows))
            table = pa.table({f"f{c}": data[c] for c in range(COLUMNS)})
            pq.write_table(table, raw / f"part-{part}.parquet", compression="none")
        out = self.base / f"signed-{self.count}"
        publish_dataset(raw, name=name, key_path=self.key, out=out)
        shutil.rmtree(raw)
        self.last_bytes = sum(p.stat().st_size for p in out.iterdir())
        return out

    @staticmethod
    def done(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)


def run_child(mode: str, env: dict[str, str], spec: dict[str, str], timeout: float) -> dict:
    """One ingest in a fresh interpreter; wall seconds from spawn to exit and its own split."""
    start = time.perf_counter()
    proc = subprocess.run(
        [PYTHON, "-c", CHILD, json.dumps({"mode": mode, **spec})],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{mode} child failed ({proc.returncode}): " + " | ".join(tail))
    inner = json.loads(lines[-1][len("BENCH ") :])
    return {"wall_s": wall, "import_s": inner["import_s"], "call_s": inner["call_s"]}


def main() -> None:
    args = parse_args()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", args.prefect_log_level)
    base = Path(tempfile.mkdtemp(prefix="aegis-bench-flow-", dir=args.tmp))
    server = Server(base / "server-home", args.server_timeout)
    started = time.perf_counter()
    try:
        result = measure(args, base, server)
    finally:
        server.stop()
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    result["total_benchmark_seconds"] = time.perf_counter() - started
    report(args, result)


def cpu_snapshot(server_pid: int | None) -> dict[str, float]:
    """CPU seconds so far: this process (all threads), its waited children, the server tree."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    snap = {
        "this_process": time.process_time(),
        "subprocesses": children.ru_utime + children.ru_stime,
        "server": 0.0,
    }
    if server_pid is not None:
        try:
            import psutil  # installed with dvc

            root = psutil.Process(server_pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    snap["server"] += times.user + times.system
        except Exception:  # psutil missing or the server gone: report no server CPU
            snap["server"] = float("nan")
    return snap


def flow_run_breakdown(count: int) -> list[dict] | None:
    """Per in-process flow run (oldest first): engine wall and the sum of its task runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(sort=FlowRunSort.START_TIME_ASC)
        if len(runs) != count:
            return None
        rows = []
        for run in runs:
            tasks = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
            )
            rows.append(
                {
                    "flow_run_running_s": (run.end_time - run.start_time).total_seconds(),
                    "tasks_s": sum((t.end_time - t.start_time).total_seconds() for t in tasks),
                    "task_runs": len(tasks),
                }
            )
        return rows


def measure(args: argparse.Namespace, base: Path, server: Server) -> dict:
    print("starting the Prefect server ...")
    server_start_s = server.start()
    print(f"  healthy after {server_start_s:.2f}s at {server.api}")
    os.environ["PREFECT_API_URL"] = server.api
    os.environ["PREFECT_HOME"] = str(base / "client-home")  # never the user's ~/.prefect

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from aegis.data.ingest import ingest
    from aegis.ledger import Ledger
    from aegis.trust_ops import new_key
    from aegis.workspace import init_workspace
    from flows.retrain import retrain

    (base / "keys").mkdir()
    admin = base / "keys" / "admin.pem"
    ws, _ = init_workspace(base / "ws", admin_key_out=admin)
    key = base / "keys" / "supplier.pem"
    new_key(ws, role="supplier", name="bench-supplier", owner="bench", out=key, admin_key=admin)
    actor, _ = Ledger.load(ws).actor(None)
    data = Datasets(base / "datasets", key, args.mb)
    name = "bench"
    server_pid = server.proc.pid if server.proc else None
    flow_calls: list[tuple[str, int]] = []  # (mode, index in its list) per in-process flow run

    def call(mode: str, src: Path) -> None:
        if mode == "direct":
            ingest(Ledger.load(ws), str(src), name=name, actor=actor)
        elif mode == "flow":
            retrain(workspace=str(ws.root), source=str(src), name=name, actor=actor)
        else:  # diagnostic: the same flow with Prefect's heartbeat thread off
            with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                retrain(workspace=str(ws.root), source=str(src), name=name, actor=actor)

    def run(mode: str) -> tuple[float, dict[str, float]]:
        src = data.fresh(name)
        os.sync()  # no write-back of the fresh dataset during the timed part
        before = cpu_snapshot(server_pid)
        took, _ = timed(lambda: call(mode, src))
        after = cpu_snapshot(server_pid)
        data.done(src)
        return took, {k: after[k] - before[k] for k in before}

    # -- warm-up in this process (first calls: imports, client, flow registration) --------
    print("warm-up: one direct ingest and one flow run in this process ...")
    first_direct_s, _ = run("direct")
    first_flow_s, _ = run("flow")
    flow_calls.append(("warm-up", 0))
    print(f"  first direct {first_direct_s:.2f}s, first flow {first_flow_s:.2f}s")

    # -- steady state, order rotating --------------------------------------------------
    modes = ["direct", "flow"] + (["flow_no_heartbeat"] if args.diagnose else [])
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for i in range(args.runs):
        shift = i % len(modes)
        for mode in modes[shift:] + modes[:shift]:
            took, used = run(mode)
            if mode != "direct":
                flow_calls.append((mode, len(seconds[mode])))
            seconds[mode].append(took)
            cpu[mode].append(used)
        print(
            f"  round {i + 1}/{args.runs}: "
            + ", ".join(f"{m} {seconds[m][-1]:.2f}s" for m in modes)
        )

    breakdown_rows = flow_run_breakdown(len(flow_calls))
    breakdown: dict[str, list[dict]] = {m: [] for m in modes if m != "direct"}
    if breakdown_rows is not None:
        for (mode, index), row in zip(flow_calls, breakdown_rows, strict=True):
            if mode in breakdown:
                wall = seconds[mode][index]
                breakdown[mode].append({**row, "outside_tasks_s": wall - row["tasks_s"]})

    # -- start-up in fresh processes -------------------------------------------------------
    spec = {"workspace": str(ws.root), "name": name, "actor": actor}
    server_env = {**os.environ, "PREFECT_API_URL": server.api}
    fresh: dict[str, list[dict]] = {"direct": [], "flow_server": []}
    for rep in range(args.startup_reps):
        for mode, label in (("direct", "direct"), ("flow", "flow_server")):
            src = data.fresh(name)
            os.sync()
            env = {**server_env, "PREFECT_HOME": str(base / f"child-home-{label}-{rep}")}
            fresh[label].append(run_child(mode, env, {**spec, "source": str(src)}, 300))
            data.done(src)
            print(f"  fresh process {label} #{rep + 1}: {fresh[label][-1]['wall_s']:.2f}s")

    ephemeral: list[dict] = []
    eph_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    eph_env["PREFECT_HOME"] = str(base / "ephemeral-home")
    for label in ("fresh PREFECT_HOME", "same PREFECT_HOME again")[: 2 * bool(args.startup_reps)]:
        src = data.fresh(name)
        os.sync()
        outcome = run_child("flow", eph_env, {**spec, "source": str(src)}, 300)
        data.done(src)
        ephemeral.append({"case": label, **outcome})
        print(f"  ephemeral flow ({label}): {outcome['wall_s']:.2f}s")

    return {
        "server_start_s": server_start_s,
        "dataset_bytes": data.last_bytes,
        "first_in_process": {"direct_s": first_direct_s, "flow_s": first_flow_s},
        "modes": modes,
        "seconds": seconds,
        "cpu": cpu,
        "breakdown": breakdown if breakdown_rows is not None else None,
        "fresh_process": fresh,
        "ephemeral": ephemeral,
    }


def _median_of(rows: list[dict], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def report(args: argparse.Namespace, r: dict) -> None:
    secs = r["seconds"]
    direct_med = statistics.median(secs["direct"])
    medians = {m: statistics.median(v) for m, v in secs.items()}
    overhead = {m: (medians[m] - direct_med) / direct_med for m in secs if m != "direct"}
    per_pair = {
        m: [(f - d) / d for d, f in zip(secs["direct"], secs[m], strict=True)]
        for m in secs
        if m != "direct"
    }
    met = overhead["flow"] <= GOAL_OVERHEAD
    cpu = {m: {k: _median_of(rows, k) for k in rows[0]} for m, rows in r["cpu"].items()}
    breakdown = None
    if r["breakdown"] is not None:
        breakdown = {
            m: {
                "tasks_s_median": _median_of(rows, "tasks_s"),
                "outside_tasks_s_median": _median_of(rows, "outside_tasks_s"),
                "flow_run_running_s_median": _median_of(rows, "flow_run_running_s"),
                "tasks_minus_direct_s": _median_of(rows, "tasks_s") - direct_med,
            }
            for m, rows in r["breakdown"].items()
        }

    startup: dict = {
        "server_start_until_healthy_s": r["server_start_s"],
        "first_flow_in_process_s": r["first_in_process"]["flow_s"],
        "first_flow_minus_steady_flow_s": r["first_in_process"]["flow_s"] - medians["flow"],
    }
    if args.startup_reps:
        fresh_direct = _median_of(r["fresh_process"]["direct"], "wall_s")
        fresh_flow = _median_of(r["fresh_process"]["flow_server"], "wall_s")
        startup |= {
            "fresh_process_direct_wall_s": fresh_direct,
            "fresh_process_flow_server_wall_s": fresh_flow,
            "fresh_process_flow_minus_direct_s": fresh_flow - fresh_direct,
            "fresh_process_import_s": {
                "direct": _median_of(r["fresh_process"]["direct"], "import_s"),
                "flow": _median_of(r["fresh_process"]["flow_server"], "import_s"),
            },
            "ephemeral_first_flow_wall_s": r["ephemeral"][0]["wall_s"],
            "ephemeral_again_flow_wall_s": r["ephemeral"][1]["wall_s"],
            "ephemeral_first_minus_fresh_direct_s": r["ephemeral"][0]["wall_s"] - fresh_direct,
        }

    print()
    print(f"steady state ({args.runs} rounds, {r['dataset_bytes'] / MB:.1f} MB per dataset):")
    for mode in r["modes"]:
        extra = "" if mode == "direct" else f"  overhead {overhead[mode]:+.1%}"
        c = cpu[mode]
        print(
            f"  {mode:18s} median {medians[mode]:.3f}s{extra}   CPU s: this process "
            f"{c['this_process']:.2f}, subprocesses {c['subprocesses']:.2f}, "
            f"server {c['server']:.2f}"
        )
    print(
        f"  flow overhead {overhead['flow']:+.1%} (per-pair median "
        f"{statistics.median(per_pair['flow']):+.1%}); goal <= {GOAL_OVERHEAD:.0%}: "
        f"{'MET' if met else 'MISSED'}"
    )
    if breakdown:
        for mode, b in breakdown.items():
            print(
                f"  {mode}: inside tasks {b['tasks_s_median']:.3f}s "
                f"({b['tasks_minus_direct_s']:+.3f}s vs direct), outside tasks "
                f"{b['outside_tasks_s_median']:.3f}s"
            )
    print("start-up:")
    print(f"  prefect server start until healthy   {r['server_start_s']:.2f}s")
    print(f"  first flow run in this process       {r['first_in_process']['flow_s']:.2f}s")
    if args.startup_reps:
        print(
            f"  fresh process, direct ingest         {startup['fresh_process_direct_wall_s']:.2f}s"
        )
        print(
            f"  fresh process, flow (server)         "
            f"{startup['fresh_process_flow_server_wall_s']:.2f}s"
        )
        print(f"  fresh process, flow (ephemeral, 1st) {r['ephemeral'][0]['wall_s']:.2f}s")
        print(f"  fresh process, flow (ephemeral, 2nd) {r['ephemeral'][1]['wall_s']:.2f}s")

    path = write_result(
        f"bench_flow-{args.tag}" if args.tag else "bench_flow",
        {
            "title": "Prefect retrain flow overhead over direct core calls, and start-up cost",
            "parameters": {
                "runs": args.runs,
                "mb_per_dataset": args.mb,
                "dataset_bytes": r["dataset_bytes"],
                "startup_reps": args.startup_reps,
                "diagnose": args.diagnose,
                "prefect_logging_level": os.environ.get("PREFECT_LOGGING_LEVEL"),
                "order": "rounds; the mode order rotates each round",
                "warm_up": "one direct and one flow run in-process before timing",
            },
            "raw_seconds": {
                **secs,
                "first_in_process": r["first_in_process"],
                "fresh_process": r["fresh_process"],
                "ephemeral": r["ephemeral"],
                "server_start_until_healthy": r["server_start_s"],
            },
            "raw_cpu_seconds": r["cpu"],
            "raw_flow_run_breakdown": r["breakdown"],
            "steady_state": {
                m: {
                    **summary(v),
                    "mb_per_s_median": r["dataset_bytes"] / MB / medians[m],
                    "cpu_s_median": cpu[m],
                }
                for m, v in secs.items()
            },
            "ratios": {
                "overhead_median": overhead["flow"],
                "overhead_per_pair": per_pair["flow"],
                "overhead_per_pair_median": statistics.median(per_pair["flow"]),
                "flow_over_direct_median": medians["flow"] / direct_med,
                **(
                    {
                        "diagnostic_no_heartbeat_overhead_median": overhead["flow_no_heartbeat"],
                        "diagnostic_no_heartbeat_per_pair_median": statistics.median(
                            per_pair["flow_no_heartbeat"]
                        ),
                    }
                    if "flow_no_heartbeat" in overhead
                    else {}
                ),
            },
            "flow_breakdown": breakdown,
            "startup": startup,
            "goal": {
                "metric": "overhead_median",
                "op": "<=",
                "target": GOAL_OVERHEAD,
                "value": overhead["flow"],
                "met": met,
            },
            "total_benchmark_seconds": r["total_benchmark_seconds"],
        },
    )
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
