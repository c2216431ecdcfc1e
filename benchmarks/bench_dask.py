"""The evaluation's attack jobs on a local 2-worker Dask cluster against running them serially.

What is measured
    The robustness evaluation (``aegis.evaluate.robustness.assess_robustness``) with the
    default ``evaluate`` section of params (300 test samples; our PGD-20 at the training
    ε 0.1 and over the sweep 0.05-0.2; APGD-CE, APGD-T over 9 targets, Square 100 x 500):
    7 jobs, one per independent attack and one per sweep ε. The model is the one the
    default ``train`` section trains (PGD-7, 10 epochs, seed 0) on the pipeline's own split
    and preprocessing of digits; attacks on a robust model run longest (few samples break
    early). Each mode runs ``--repeats`` (3) times, interleaved in rotating order:

    - ``serial``: every job in this process, one torch thread each (the baseline, and what
      ``aegis stage evaluate`` does);
    - ``serial_2_threads``: the same with two torch threads per job (the evaluation before
      jobs: ``train.threads`` = 2 for the whole of it);
    - ``threads``: ``run.task_runner: threads`` through ``tasks.evaluate_jobs`` (a nested
      Prefect flow on Prefect's thread pool, as ``aegis run`` evaluates by default);
    - ``dask``: ``run.task_runner: dask``, ``run.dask_workers: 2``: the nested flow starts a
      local cluster of 2 worker processes of one thread, runs the jobs, closes it; the
      cluster's start is part of every evaluation, as it is in a run;
    - ``dask_warm``: ``run.dask_address`` at a 2-worker cluster started once by this script
      (an existing cluster: no start, workers already imported torch), built as the
      ``dask`` mode builds its own (``tasks.evaluate_jobs.local_cluster``: workers without
      Dask's ``MALLOC_TRIM_THRESHOLD_=65536``, which costs the attacks ~30 %).

    Wall time of the whole ``assess_robustness`` call (clean prediction and gradient
    statistics included: milliseconds). Best of the repeats against serial's best (other
    work on a shared 2-core machine stretches single runs; load averages are recorded);
    medians too. Every mode's per-sample results must equal serial's; 2 threads may
    legitimately differ (floating-point reduction order), reported apart.

    Per-job seconds are measured where the job ran; on the thread pool they include the
    wait for the process's global RNGs, which serialise ART's attacks.

    The jobs are unequal: the ceiling of any runner that keeps them whole is the
    serial total over the longest-processing-time-first makespan on 2 workers, computed
    from serial's own job times and reported as ``job_bound``.

Why
    Issue 11: scale out on an existing engine. Goal: >= 1.6x on 2 workers, judged on
    ``dask`` (what the setting gives a run, cluster start included); ``dask_warm`` is
    judged too. Prefect and Dask cost ~0.25 s per task here, so jobs are coarse.

One Prefect server is started for the benchmark (its own PREFECT_HOME in a temp
directory, ``bench_flow.Server``); Prefect logs at CRITICAL, as ``aegis run`` sets them.

Run: ``.venv/bin/python benchmarks/bench_dask.py [--repeats 3] [--quick]``. Writes
``benchmarks/results/bench_dask.json`` (``bench_dask-quick.json`` with ``--quick``: 100
samples, APGD-T on 3 targets, Square 50 x 100, 1 repeat, a smoke run). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import quiet_environment, write_result
from _digits import load_average, prepared_digits, quiet_warnings, split_tensors, torch_facts

quiet_environment()
quiet_warnings()
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")

GOAL_SPEEDUP = 1.6
WORKERS = 2
DOMAIN = (0.0, 1.0)
MODES = ("serial", "serial_2_threads", "threads", "dask", "dask_warm")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=None, help="timed runs of each mode (3)")
    parser.add_argument("--seed", type=int, default=0, help="train.seed (the evaluation's seed)")
    parser.add_argument("--train-threads", type=int, default=2, help="torch threads, training")
    parser.add_argument("--quick", action="store_true", help="smoke run: small budgets, 1 run")
    parser.add_argument("--server-timeout", type=float, default=300.0)
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3)
    return args


def evaluate_params(quick: bool):
    from aegis.config import EvaluateParams

    if not quick:
        return EvaluateParams()  # the pipeline's defaults
    return EvaluateParams(max_samples=100, apgd_targets=3, square_samples=50, square_queries=100)


def train(args: argparse.Namespace):
    """The model the default ``train`` section trains (PGD-7, 10 epochs), and its test split."""
    from aegis.config import TrainParams
    from aegis.train.trainer import train_model

    params = TrainParams(seed=args.seed, threads=args.train_threads)
    prepared = prepared_digits(params)
    started = time.perf_counter()
    result = train_model(prepared, params, progress=lambda record: None)
    seconds = time.perf_counter() - started
    x_test, y_test = split_tensors(prepared)["test"]
    return result.model.eval(), x_test, y_test, params, seconds


def lpt_makespan(seconds: list[float], workers: int) -> float:
    """Longest processing time first on ``workers``: the finishing time of the busiest."""
    loads = [0.0] * workers
    for s in sorted(seconds, reverse=True):
        loads[loads.index(min(loads))] += s
    return max(loads)


def per_sample(report) -> dict[str, list[bool]]:
    runs = [*report.sweep.values(), *report.independent.values()]
    return {f"{r.name}@{r.eps:g}": r.correct.tolist() for r in runs}


def mappers(warm_address: str) -> dict[str, Any]:
    from aegis.config import RunParams
    from aegis.evaluate.jobs import run_job
    from tasks.evaluate_jobs import map_jobs_on

    return {
        "serial": None,  # assess_robustness's default: run_serially
        "serial_2_threads": lambda jobs: [run_job(job, threads=2) for job in jobs],
        "threads": map_jobs_on(RunParams(task_runner="threads")),
        "dask": map_jobs_on(RunParams(task_runner="dask", dask_workers=WORKERS)),
        "dask_warm": map_jobs_on(RunParams(task_runner="dask", dask_address=warm_address)),
    }


def run_modes(model, x, y, *, eps, params, seed, warm_address, repeats) -> dict[str, Any]:
    """Every mode ``repeats`` times, in rotating order; wall times and per-sample results."""
    from aegis.evaluate.robustness import assess_robustness

    maps = mappers(warm_address)
    out: dict[str, Any] = {m: {"seconds": [], "job_seconds": [], "results": []} for m in MODES}
    for r in range(repeats):
        shift = r % len(MODES)
        for mode in MODES[shift:] + MODES[:shift]:
            started = time.perf_counter()
            report = assess_robustness(
                model, x, y, eps=eps, domain=DOMAIN, params=params, seed=seed,
                map_jobs=maps[mode],
            )  # fmt: skip
            seconds = time.perf_counter() - started
            rec = out[mode]
            rec["seconds"].append(seconds)
            runs = [*report.independent.values(), *report.sweep.values()]
            rec["job_seconds"].append({f"{j.name}@{j.eps:g}": j.seconds for j in runs})
            rec["results"].append(per_sample(report))
            rec["report"] = report
            print(f"  [{r + 1}/{repeats}] {mode:16s} {seconds:7.2f}s (load {load_average()})",
                  flush=True)  # fmt: skip
    return out


def summarize(out: dict[str, Any], baseline_mode: str = "serial") -> dict[str, Any]:
    base = out[baseline_mode]
    base_best, base_median = min(base["seconds"]), statistics.median(base["seconds"])
    reference = base["results"][0]
    modes = {}
    for mode in MODES:
        rec = out[mode]
        best, median = min(rec["seconds"]), statistics.median(rec["seconds"])
        modes[mode] = {
            "seconds": [round(s, 3) for s in rec["seconds"]],
            "best_s": round(best, 3),
            "median_s": round(median, 3),
            "speedup_vs_serial": round(base_best / best, 3),
            "speedup_vs_serial_median": round(base_median / median, 3),
            "identical_to_serial": all(res == reference for res in rec["results"]),
            "repeats_identical": all(res == rec["results"][0] for res in rec["results"]),
            "job_seconds_best_run": {
                k: round(v, 3) for k, v in rec["job_seconds"][rec["seconds"].index(best)].items()
            },
        }
    return modes


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    load_start = load_average()
    from bench_flow import Server

    from aegis.evaluate.jobs import attack_seed
    from tasks.evaluate_jobs import local_cluster

    torch.set_num_threads(args.train_threads)
    model, x_test, y_test, train_params, train_seconds = train(args)
    params = evaluate_params(args.quick)
    eps = train_params.epsilon
    print(
        f"digits: model trained in {train_seconds:.1f}s ({train_params.defense}, "
        f"{train_params.epochs} epochs); evaluating {params.max_samples} of {len(y_test)} "
        f"test samples at eps {eps:g}, sweep {params.epsilons}, {params.independent}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench_dask-") as tmp:
        server = Server(Path(tmp) / "server-home", args.server_timeout)
        try:
            server_start_s = server.start()
            os.environ["PREFECT_API_URL"] = server.api
            os.environ["PREFECT_HOME"] = str(Path(tmp) / "client-home")  # never ~/.prefect
            print(f"prefect server up in {server_start_s:.1f}s at {server.api}", flush=True)
            cluster_started = time.perf_counter()
            # the cluster run.task_runner: dask starts, started once: an existing cluster
            with local_cluster(n_workers=WORKERS, processes=True, threads_per_worker=1) as cluster:
                warm_start_s = time.perf_counter() - cluster_started
                out = run_modes(
                    model, x_test, y_test, eps=eps, params=params, seed=train_params.seed,
                    warm_address=cluster.scheduler_address, repeats=args.repeats,
                )  # fmt: skip
        finally:
            server.stop()

    modes = summarize(out)
    serial_jobs = modes["serial"]["job_seconds_best_run"]
    total_jobs = sum(serial_jobs.values())
    makespan = lpt_makespan(list(serial_jobs.values()), WORKERS)
    report = out["serial"]["report"]
    goal_modes = ("dask", "dask_warm")
    metrics_identical = all(modes[m]["identical_to_serial"] for m in ("threads", *goal_modes))
    goal = {
        "speedup_min": GOAL_SPEEDUP,
        "workers": WORKERS,
        "judged_on": "dask",
        "speedup": modes["dask"]["speedup_vs_serial"],
        "met": modes["dask"]["speedup_vs_serial"] >= GOAL_SPEEDUP and metrics_identical,
        "speedup_warm": modes["dask_warm"]["speedup_vs_serial"],
        "met_warm": modes["dask_warm"]["speedup_vs_serial"] >= GOAL_SPEEDUP and metrics_identical,
        "metrics_identical": metrics_identical,
    }
    result = {
        "parameters": {
            "repeats": args.repeats,
            "quick": args.quick,
            "workers": WORKERS,
            "threads_per_job": 1,
            "train": train_params.model_dump(),
            "evaluate": params.model_dump(),
            "eps": eps,
        },
        "seeds": {
            "train_seed": train_params.seed,
            "evaluation_seed": train_params.seed,
            "per_attack": {
                a: attack_seed(train_params.seed, a) for a in ("pgd", *params.independent)
            },
        },
        "baseline": {
            "mode": "serial",
            "what": "every job in this process, one after the other, 1 torch thread each",
            "best_s": modes["serial"]["best_s"],
            "median_s": modes["serial"]["median_s"],
        },
        "modes": modes,
        "job_bound": {
            "what": "serial job seconds over their LPT makespan on 2 workers: the ceiling of "
            "any runner that keeps the jobs whole",
            "total_job_s": round(total_jobs, 3),
            "longest_job": max(serial_jobs, key=serial_jobs.get),
            "longest_job_s": round(max(serial_jobs.values()), 3),
            "makespan_2_workers_s": round(makespan, 3),
            "max_speedup": round(total_jobs / makespan, 3),
        },
        "figures": {
            "clean": report.clean_accuracy,
            "pgd": report.pgd.accuracy,
            "worst_case": report.worst_case,
            "independent": {k: v.accuracy for k, v in report.independent.items()},
            "sweep": {f"{k:g}": v.accuracy for k, v in report.sweep.items()},
        },
        "goal": goal,
        "setup_seconds": {
            "train_s": round(train_seconds, 3),
            "prefect_server_start_s": round(server_start_s, 3),
            "warm_cluster_start_s": round(warm_start_s, 3),
        },
        "load_average": {"start": load_start, "end": load_average()},
        "torch": torch_facts(),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    path = write_result("bench_dask-quick" if args.quick else "bench_dask", result)
    print()
    print(f"{'mode':18s} {'best':>8s} {'median':>8s} {'speed-up':>9s}  identical to serial")
    for mode, m in modes.items():
        print(f"{mode:18s} {m['best_s']:7.2f}s {m['median_s']:7.2f}s {m['speedup_vs_serial']:8.2f}x"
              f"  {m['identical_to_serial']}")  # fmt: skip
    bound = result["job_bound"]
    print(
        f"job bound on {WORKERS} workers: {bound['max_speedup']:.2f}x (longest job "
        f"{bound['longest_job']} {bound['longest_job_s']:.1f}s of {bound['total_job_s']:.1f}s)"
    )
    verdict = {True: "MET", False: "MISSED"}
    print(
        f"goal >= {GOAL_SPEEDUP}x on {WORKERS} workers: dask {goal['speedup']:.2f}x "
        f"{verdict[goal['met']]}; warm cluster {goal['speedup_warm']:.2f}x "
        f"{verdict[goal['met_warm']]}; metrics identical: {metrics_identical}"
    )
    print(f"wrote {path}")


if __name__ == "__main__":  # spawned Dask workers import this module: only the parent runs it
    sys.exit(main())
