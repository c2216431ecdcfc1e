"""Containment speed: ``aegis drill`` end to end, and breach -> verified rollback served.

Each run is a whole drill (``aegis.drill.run_drill``: a scratch workspace, two real
releases and promotions, a real gateway, the monitor passing every second with the
gateway's URL, its automatic rollback). Figures per run:

- ``drill_s``: the drill end to end (goal <= 90 s);
- ``breach_to_served_s``: from the incident's detection (its confirming window closed
  and tested) to the gateway's ``/readyz`` serving the rollback target (goal <= 10 s);
- ``time_to_detect_s`` / ``time_to_contain_s``: from the first bad request.

Baseline in the same run: the manual path's machine time once an operator is alerted.
In each drill's workspace the operator promotes v2 back (request, approval, resume),
a gateway serves it, and ``aegis rollback --to v1`` runs as a process; the figure is
from starting that command to the gateway serving v1 (it leaves out the human's
reaction, which the automatic path removes).

Runs vary by scheduling only (the drill is seeded), so ``RUNS`` repeats stand in for
seeds. Run: ``.venv/bin/python benchmarks/bench_drill.py`` (about 8 minutes on 2 cores).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import quiet_environment, write_result

RUNS = 5
GOALS = {"drill_s": 90.0, "breach_to_served_s": 10.0}


def _seconds(start: str, end: str) -> float:
    from aegis.timeutil import parse_utc

    return (parse_utc(end) - parse_utc(start)).total_seconds()


def _manual_rollback(root: Path) -> float:
    """Promote v2 back, serve it, then time ``aegis rollback --to v1`` until it is served."""
    from aegis import demo_gateway as gw
    from aegis.drill import MODEL, promote_with_approval
    from aegis.monitor.contain import wait_served
    from aegis.workspace import Workspace

    people = root.parent / "people"
    keys = {"operator": people / "drill-operator.pem", "approver": people / "drill-approver.pem"}
    promote_with_approval(Workspace(root), "v2.0.0", keys)
    with gw.gateway(root, people / "drill-gateway.pem", say=lambda _: None) as url:
        if not wait_served(url, "v2.0.0", 30):
            raise RuntimeError("the gateway did not serve v2")
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "aegis", "--workspace", str(root), "rollback", "--to",
             f"{MODEL}@v1.0.0", "--reason", "bench: the manual path", "--key",
             str(keys["operator"])], check=True, capture_output=True,
        )  # fmt: skip
        if not wait_served(url, "v1.0.0", 30):
            raise RuntimeError("the gateway did not serve v1 after the manual rollback")
        return time.monotonic() - started


def main() -> None:
    quiet_environment()
    from aegis.drill import run_drill
    from aegis.ledger import Ledger
    from aegis.monitor.incidents import incidents
    from aegis.workspace import Workspace

    runs = []
    for run in range(RUNS):
        base = Path(tempfile.mkdtemp(prefix="aegis-bench-drill-"))
        result = run_drill(base / "d")
        ws = Workspace(Path(result.workspace))
        incident = next(i for i in incidents(Ledger.load(ws)) if i.id == result.incident)
        figures = {
            "run": run,
            "drill_s": result.seconds,
            "time_to_detect_s": result.time_to_detect_s,
            "time_to_contain_s": result.time_to_contain_s,
            "breach_to_served_s": round(_seconds(incident.detected, incident.contained), 3),
            "signals": result.signals,
            "manual_rollback_s": round(_manual_rollback(ws.root), 3),
        }
        print(figures, flush=True)
        runs.append(figures)
    summary = {}
    for name in ("drill_s", "time_to_detect_s", "time_to_contain_s", "breach_to_served_s",
                 "manual_rollback_s"):  # fmt: skip
        values = [r[name] for r in runs]
        summary[name] = {"median": round(statistics.median(values), 3),
                         "max": round(max(values), 3), "min": round(min(values), 3)}  # fmt: skip
    goals = {
        name: {"goal_max": goal, "worst": summary[name]["max"],
               "met": summary[name]["max"] <= goal}
        for name, goal in GOALS.items()
    }  # fmt: skip
    path = write_result("bench_drill", {
        "runs": runs, "summary": summary, "goals": goals,
        "seeds": "the drill is seeded (train.seed 0, replay sample 0); runs differ by "
                 f"scheduling: {RUNS} repeats",
        "baseline": "manual_rollback_s: `aegis rollback --to v1` as a process until the "
                    "gateway serves v1 (the human's reaction time excluded)",
        "monitor_interval_s": 1.0,
    })  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
