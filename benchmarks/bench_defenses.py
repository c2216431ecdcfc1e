"""Adversarial training on digits: its cost (x clean training) and its robustness under AutoAttack.

What is measured
    For each ε of ``--eps`` (default 0.1; ``--eps 0.1 0.2`` doubles the run time; L-inf,
    pixels scaled to [0, 1]), four CNNs with the default architecture (``train.model``
    defaults: conv 16-32, dense 64, ReLU) are trained with
    ``aegis.train.trainer.train_model`` on the pipeline's own split and preprocessing of
    scikit-learn's digits (``aegis.train.data.prepare``), same seed, batch 64, SGD and
    thread count (``--threads``, 2), ``--epochs`` (10) epochs unless said otherwise:

    - ``none``: clean training (the baseline);
    - ``fgsm_rs``: FGSM with random start (Wong et al. 2020), step 1.25 ε;
    - ``pgd``: PGD-7 adversarial training (Madry et al. 2018), step ε/4 (the default
      ratio of ``train.step_size`` to ``train.epsilon``);
    - ``fgsm_rs_short``: FGSM-RS for fewer epochs (``--fast-epochs``, default 0.8 x
      ``--epochs``): an FGSM-RS epoch costs almost two clean ones (10 epochs took 1.8x
      clean time), so fewer epochs is the way (Wong et al.'s own) into the 1.5x budget;
      8 of 10 took 1.3x in a trial, 6 took 1.1x but lost 4 points of AutoAttack
      accuracy against PGD-7 (``results/bench_defenses-two-eps.json``).

    Training time: wall clock of the whole ``train_model`` call (tensors, model, epochs,
    per-epoch validation), ``--repeats`` runs of each variant interleaved in rotating
    order, all before any attack, after one untimed warm-up. The best time is held
    against the clean best of the same run (the ratio is the figure; seconds depend on
    the machine); medians, process CPU seconds and the epoch-loop seconds are reported
    too. Best-of-N because other work on a shared machine stretches single runs many
    times over (2 torch threads on 2 busy cores spin at every parallel region); the load
    average at start and end is recorded. Every repeat must give the same weights
    (digest recorded): training is deterministic.

    Robustness, on the first ``--samples`` (300) test samples at the training ε, input
    domain [0, 1]:

    - our PGD-20 (``aegis.evaluate.attacks.pgd_correct``: 20 steps of 2.5 ε/20, one random
      start, as ``evaluate.pgd_steps``/``pgd_restarts`` default);
    - ART's APGD-CE and APGD-T (``apgd_ce_correct``, ``apgd_t_correct``: 100 iterations,
      APGD-T over 9 target classes), the independent suite the pipeline runs;
    - ART's full AutoAttack (``art.attacks.evasion.AutoAttack`` with its default attack
      list: APGD-CE and APGD-DLR with 5 restarts x 100 iterations, DeepFool, Square with
      5 restarts x 5000 queries; initial APGD step 2 ε as in Croce & Hein 2020) on the first
      ``--aa-samples`` of them: the headline robust figure. Its attacks query the model with
      up to 512 samples at once (ART's Square default of 128 would split every query of
      Square's 25,000 into three; the results are the same).

    The models are attacked in ``--jobs`` (2) spawned worker processes, one model each at
    a time, with ``--attack-threads`` (1) torch thread each: the attack batches are tiny,
    so two processes of one thread use the 2 cores far better than one process of two
    threads (on a busy machine two threads wait for each other at every operation: one
    model call on 300 samples took 46 ms with 2 threads against 8 ms with 1 while other
    jobs ran). Accuracies do not depend on it; per-attack seconds are per worker.

    Every adversarial example is projected back into the ε-ball and the domain and
    re-scored with the model itself; a sample misclassified without attack never counts
    as robust. ``worst_case`` is the per-sample worst case over all four attacks (on the
    AutoAttack samples). Standard errors are binomial.

Why
    Issue 5: robustness claims need strong attacks (a PGD-7 model at ε=0.3 showed 0.32
    under PGD-20 but 0.015 under AutoAttack), the default ε for digits must be one where
    robustness is real, and AutoAttack is the headline figure. Goals, each from one run:
    (1) a fast defense (FGSM-RS) at <= 1.5x clean training time whose AutoAttack accuracy
    is within 2 points of PGD-7 training's (or better); (2) the independent suite and our
    PGD agree within 2 points on every model called robust (here: every adversarially
    trained model): PGD-20 accuracy minus the per-sample worst case of APGD-CE, APGD-T and
    AutoAttack <= 0.02. The goals are judged at the first ε of ``--eps`` (the candidate
    default); every ε measured is reported. The issue's anchors are in the JSON.

    ``--quick`` (one ε, 100 samples, one timed repeat, AutoAttack with Square cut to one
    restart of 500 queries, marked ``autoattack.full = false``) is a smoke run of ~2-3
    minutes; its goal verdicts are provisional.

Run: ``.venv/bin/python benchmarks/bench_defenses.py [--eps 0.1 0.2] [--aa-samples 300]``.
Writes ``benchmarks/results/bench_defenses.json`` (``bench_defenses-quick.json`` with
``--quick``). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import quiet_environment, write_result
from _digits import (
    binomial_stderr,
    load_average,
    prepared_digits,
    quiet_warnings,
    split_tensors,
    torch_facts,
    weights_digest,
)
from torch import nn

quiet_environment()
quiet_warnings()

# (name, train.defense); "fgsm_rs_short" is FGSM-RS with fewer epochs (--fast-epochs), the
# way Wong et al. make it fast: its time is what the 1.5x budget allows.
VARIANTS = (
    ("none", "none"),
    ("fgsm_rs", "fgsm_rs"),
    ("fgsm_rs_short", "fgsm_rs"),
    ("pgd", "pgd"),
)
FAST = ("fgsm_rs", "fgsm_rs_short")
DOMAIN = (0.0, 1.0)
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "deepfool", "square")  # ART's default list, in order
AA_BATCH = 512  # samples per model call inside AutoAttack: all of them (speed only)
GOAL_TIME_RATIO = 1.5
GOAL_AA_GAP = 0.02
GOAL_AGREE = 0.02
# "Robustness is real" at an ε: the PGD-7 model keeps at least half the samples under
# AutoAttack and beats the undefended model by at least 10 points.
REAL_MIN_AA = 0.5
REAL_MIN_GAIN = 0.10
ANCHORS = {
    "source": "issue 5, Benchmarks (digits, 2 threads, straightforward implementations)",
    "eps_0.3_pgd7_model": {"pgd20": 0.32, "apgd_ce": 0.035, "autoattack": 0.015},
    "eps_0.1_300_samples": {
        "none": {"clean": 0.947, "autoattack": 0.570},
        "fgsm_rs": {"clean": 0.970, "autoattack": 0.737, "time_ratio": 1.6},
        "pgd": {"clean": 0.970, "apgd_ce": 0.790, "time_ratio": 4.9},
        "pgd20_over_reported_by_points": [5, 12],
    },
    "autoattack_minutes_300_samples": {"undefended": 1, "robust": [6, 7]},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--eps", type=float, nargs="+", default=None, help="training/attack radii (0.1)"
    )
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every model (10)")
    parser.add_argument("--steps", type=int, default=7, help="PGD training steps (7)")
    parser.add_argument(
        "--fast-epochs", type=int, default=None, help="epochs of fgsm_rs_short (0.8 x epochs)"
    )
    parser.add_argument("--samples", type=int, default=None, help="test samples attacked (300)")
    parser.add_argument(
        "--aa-samples", type=int, default=None, help="of which AutoAttack attacks (all)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed trainings each (5)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, training (2)")
    parser.add_argument(
        "--attack-threads", type=int, default=1, help="torch threads per attack worker (1)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="attack worker processes (2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--square-iters", type=int, default=None, help="cut AutoAttack's Square (not full AA)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: ~2-3 minutes")
    parser.add_argument("--tag", default="", help="suffix of the result file")
    args = parser.parse_args()
    quick = args.quick
    args.eps = args.eps or [0.1]
    args.samples = args.samples or (100 if quick else 300)
    args.aa_samples = min(args.aa_samples or args.samples, args.samples)
    args.repeats = args.repeats or (3 if quick else 5)
    args.fast_epochs = args.fast_epochs or max(1, round(0.8 * args.epochs))
    if quick and args.square_iters is None:
        args.square_iters = 500
    return args


# -- attacks ----------------------------------------------------------------------------------


@torch.no_grad()
def rescore(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv, eps: float) -> np.ndarray:
    """Correct on the adversarial input projected into the threat model, and on the clean one."""
    adv = torch.as_tensor(np.asarray(x_adv), dtype=torch.float32).reshape(x.shape)
    adv = torch.minimum(torch.maximum(adv, x - eps), x + eps).clamp(*DOMAIN)
    return ((model(adv).argmax(1) == y) & (model(x).argmax(1) == y)).numpy()


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    seed: int,
    square_iters: int | None,
) -> dict[str, Any]:
    """ART's AutoAttack (default attack list) on ``x``; per-sample correctness and timings."""
    from art.attacks.evasion import AutoAttack
    from art.estimators.classification import PyTorchClassifier

    from aegis.evaluate.attacks import seeded_global_rngs

    model.eval()
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    clf = PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=classes,
        clip_values=DOMAIN,
        device_type="cpu",
    )
    seconds: dict[str, float] = dict.fromkeys(AA_ATTACKS, 0.0)
    with seeded_global_rngs(seed):
        aa = AutoAttack(clf, norm=np.inf, eps=eps, eps_step=2 * eps, batch_size=AA_BATCH)
        square = aa.attacks[AA_ATTACKS.index("square")]
        square.set_params(batch_size=AA_BATCH)  # ART's default 128 splits every query
        if square_iters is not None:
            square.set_params(max_iter=square_iters, nb_restarts=1)
        for name, attack in zip(AA_ATTACKS, aa.attacks, strict=True):
            if "verbose" in attack.attack_params:
                attack.set_params(verbose=False)  # progress bars only
            attack.generate = _timed(attack.generate, seconds, name)
        started = time.perf_counter()
        x_adv = aa.generate(x.numpy(), y=y.numpy())
        total = time.perf_counter() - started
    correct = rescore(model, x, y, x_adv, eps)
    best = np.asarray(aa.best_attacks)
    broken_by = {name: int((best == i).sum()) for i, name in enumerate(AA_ATTACKS)}
    return {
        "correct": correct,
        "seconds": total,
        "seconds_by_attack": seconds,
        "broken_by": broken_by,
        "art_robust_count": int((best == AutoAttack.SAMPLE_DEFAULT).sum()),
        "square": {"max_iter": int(square.max_iter), "nb_restarts": int(square.nb_restarts)},
    }


def _timed(fn, seconds: dict[str, float], name: str):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[name] += time.perf_counter() - started

    return wrapper


def attack_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    aa_samples: int,
    seed: int,
    square_iters: int | None,
    label: str = "",
) -> dict[str, Any]:
    from aegis.evaluate.attacks import apgd_ce_correct, apgd_t_correct, pgd_correct

    runs: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    model.eval()
    with torch.no_grad():
        runs["clean"] = (model(x).argmax(1) == y).numpy()
    for name, fn in (
        ("pgd20", lambda: pgd_correct(model, x, y, eps=eps, steps=20, domain=DOMAIN, seed=seed)),
        ("apgd_ce", lambda: apgd_ce_correct(model, x, y, eps=eps, domain=DOMAIN, seed=seed + 1)),
        ("apgd_t", lambda: apgd_t_correct(model, x, y, eps=eps, domain=DOMAIN, seed=seed + 2)),
    ):
        started = time.perf_counter()
        runs[name] = np.asarray(fn(), dtype=bool)
        seconds[name] = time.perf_counter() - started
        print(f"    {label} {name}: {runs[name].mean():.3f} ({seconds[name]:.0f}s)", flush=True)
    n = aa_samples
    aa = autoattack(model, x[:n], y[:n], eps=eps, seed=seed + 4, square_iters=square_iters)
    seconds["autoattack"] = aa["seconds"]
    worst = runs["pgd20"][:n] & runs["apgd_ce"][:n] & runs["apgd_t"][:n] & aa["correct"]
    independent = runs["apgd_ce"][:n] & runs["apgd_t"][:n] & aa["correct"]
    acc = {name: float(v.mean()) for name, v in runs.items()}
    acc["autoattack"] = float(aa["correct"].mean())
    acc["worst_case"] = float(worst.mean())
    on_aa = {
        "pgd20": float(runs["pgd20"][:n].mean()),
        "independent_worst": float(independent.mean()),
        "clean": float(runs["clean"][:n].mean()),
    }
    return {
        "n": len(y),
        "aa_n": n,
        "accuracy": acc,
        "stderr": {
            k: binomial_stderr(v, n if k in ("autoattack", "worst_case") else len(y))
            for k, v in acc.items()
        },
        "on_autoattack_samples": on_aa,
        "pgd20_minus_independent_worst": on_aa["pgd20"] - on_aa["independent_worst"],
        "attack_seconds": seconds,
        "autoattack": {k: v for k, v in aa.items() if k != "correct"},
    }


def _attack_job(job: dict[str, Any]) -> tuple[tuple[float, str], dict[str, Any]]:
    """One model's attacks, in a worker process: the model is rebuilt from config + weights."""
    from aegis.train.models import model_from_config

    quiet_warnings()
    torch.set_num_threads(job["threads"])
    model = model_from_config(job["config"])
    model.load_state_dict(job["state"])
    eps, name = job["key"]
    out = attack_model(
        model.eval(),
        job["x"],
        job["y"],
        eps=eps,
        aa_samples=job["aa_samples"],
        seed=job["seed"],
        square_iters=job["square_iters"],
        label=f"{name} eps={eps:g}",
    )
    return job["key"], out


def run_attacks(jobs: list[dict[str, Any]], workers: int) -> dict[tuple[float, str], Any]:
    """Every job, in ``workers`` spawned processes (or in this one when 1)."""
    done: dict[tuple[float, str], Any] = {}

    def report(key, out) -> None:
        a = out["accuracy"]
        print(
            f"  {key[1]} eps={key[0]:g}: clean {a['clean']:.3f}  PGD-20 {a['pgd20']:.3f}  "
            f"APGD-CE {a['apgd_ce']:.3f}  APGD-T {a['apgd_t']:.3f}  AutoAttack "
            f"{a['autoattack']:.3f} ({out['attack_seconds']['autoattack']:.0f}s)",
            flush=True,
        )
        done[key] = out

    if workers <= 1:
        for job in jobs:
            report(*_attack_job(job))
        return done
    context = multiprocessing.get_context("spawn")  # fork after torch threads can hang
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for future in as_completed([pool.submit(_attack_job, job) for job in jobs]):
            report(*future.result())
    return done


# -- training ---------------------------------------------------------------------------------


def train_params(defense: str, eps: float, args: argparse.Namespace, epochs: int | None = None):
    from aegis.config import TrainParams

    return TrainParams(
        defense=defense,
        epsilon=eps,
        step_size=eps / 4,
        steps=args.steps,
        epochs=epochs or args.epochs,
        seed=args.seed,
        threads=args.threads,
    )


def train_all(prepared, eps_list: list[float], args: argparse.Namespace) -> dict[float, Any]:
    """Every variant at every ε ``--repeats`` times, interleaved in rotating order.

    All timed training happens first, before any attack, so the timings of one run are
    taken close together. The last model of each variant is kept.
    """
    from aegis.train.trainer import train_model

    out: dict[float, dict[str, dict[str, Any]]] = {
        eps: {
            name: {"seconds": [], "cpu_seconds": [], "epoch_loop_seconds": [], "digests": []}
            for name, _ in VARIANTS
        }
        for eps in eps_list
    }
    for r in range(args.repeats):
        for eps in eps_list:
            shift = r % len(VARIANTS)
            for name, defense in VARIANTS[shift:] + VARIANTS[:shift]:
                epochs = args.fast_epochs if name == "fgsm_rs_short" else args.epochs
                params = train_params(defense, eps, args, epochs=epochs)
                cpu, started = time.process_time(), time.perf_counter()
                result = train_model(prepared, params, progress=lambda record: None)
                seconds = time.perf_counter() - started
                rec = out[eps][name]
                rec["seconds"].append(seconds)
                rec["cpu_seconds"].append(time.process_time() - cpu)
                rec["epoch_loop_seconds"].append(sum(h["seconds"] for h in result.history))
                rec["digests"].append(weights_digest(result.model))
                rec["model"], rec["history"], rec["epochs"] = result.model, result.history, epochs
                print(f"  [{r + 1}/{args.repeats}] trained {name:13s} eps={eps:g} in "
                      f"{seconds:6.2f}s", flush=True)  # fmt: skip
    return out


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_start = load_average()
    from aegis.train.trainer import train_model

    prepared = prepared_digits(train_params("none", args.eps[0], args))
    data = split_tensors(prepared)
    x_test, y_test = data["test"]
    x, y = x_test[: args.samples], y_test[: args.samples]
    print(
        f"digits: {len(data['train'][1])} train / {len(data['val'][1])} val / {len(y_test)} test;"
        f" attacking {len(y)} (AutoAttack {args.aa_samples}); eps {args.eps}; "
        f"{args.threads} threads ({args.attack_threads} for attacks); epochs {args.epochs}"
    )
    # untimed warm-up: first-call costs (allocators, kernels, imports) out of the timings
    train_model(prepared, train_params("pgd", args.eps[0], args, epochs=1), progress=lambda r: None)

    per_eps: dict[str, Any] = {}
    all_trained = train_all(prepared, args.eps, args)
    torch.set_num_threads(args.attack_threads)
    from aegis.train.models import model_config

    config = model_config(prepared.spec, train_params("none", args.eps[0], args).model)
    jobs = [
        {
            "key": (eps, name),
            "config": config,
            "state": {k: v.detach().clone() for k, v in rec["model"].state_dict().items()},
            "x": x,
            "y": y,
            "aa_samples": args.aa_samples,
            "seed": args.seed,
            "square_iters": args.square_iters,
            "threads": args.attack_threads,
        }
        for eps, trained in all_trained.items()
        for name, rec in trained.items()
    ]
    print(f"attacking {len(jobs)} models in {args.jobs} worker process(es) ...", flush=True)
    attack_started = time.perf_counter()
    attacked_all = run_attacks(jobs, args.jobs)
    attack_seconds = time.perf_counter() - attack_started
    for eps in args.eps:
        trained = all_trained[eps]
        clean_best = min(trained["none"]["seconds"])
        clean_median = statistics.median(trained["none"]["seconds"])
        models: dict[str, Any] = {}
        for defense, _ in VARIANTS:
            rec = trained[defense]
            model = rec["model"]
            attacked = attacked_all[(eps, defense)]
            with torch.no_grad():
                test_acc = float((model(x_test).argmax(1) == y_test).float().mean())
            best, median = min(rec["seconds"]), statistics.median(rec["seconds"])
            models[defense] = {
                "train_seconds": rec["seconds"],
                "train_seconds_best": best,
                "train_seconds_median": median,
                "train_cpu_seconds": rec["cpu_seconds"],
                "cpu_ratio_vs_clean": min(rec["cpu_seconds"]) / min(trained["none"]["cpu_seconds"]),
                "epochs": rec["epochs"],
                "epoch_loop_seconds": rec["epoch_loop_seconds"],
                "time_ratio_vs_clean": best / clean_best,
                "time_ratio_vs_clean_median": median / clean_median,
                "epoch_loop_ratio_vs_clean": min(rec["epoch_loop_seconds"])
                / min(trained["none"]["epoch_loop_seconds"]),
                "deterministic_repeats": len(set(rec["digests"])) == 1,
                "weights_digest": rec["digests"][-1],
                "final_train_acc": rec["history"][-1]["train_acc"],
                "final_val_acc": rec["history"][-1]["val_acc"],
                "clean_acc_full_test": test_acc,
                "called_robust": defense != "none",
                **attacked,
            }
        per_eps[f"{eps:g}"] = {"eps": eps, "models": models, **_eps_verdicts(models)}

    total = time.perf_counter() - started
    headline = per_eps[f"{args.eps[0]:g}"]
    real = [v["eps"] for v in per_eps.values() if v["robustness_real"]]
    goals = {
        "eps": args.eps[0],
        "provisional": args.quick or args.square_iters is not None,
        "fast_defense": headline["fast_defense"],
        "suite_agrees_with_pgd": headline["suite_agreement"],
        "all_eps": {
            k: {
                "fast_defense_met": v["fast_defense"]["met"],
                "suite_agrees_met": v["suite_agreement"]["met"],
            }
            for k, v in per_eps.items()
        },
    }
    _print_table(per_eps, args)
    fast = headline["fast_defense"]
    print(
        f"goal fast defense (eps={args.eps[0]:g}; <= {GOAL_TIME_RATIO}x clean time, AutoAttack "
        f"within {GOAL_AA_GAP} of PGD-7's): {'MET' if fast['met'] else 'MISSED'}"
    )
    for name, c in fast["candidates"].items():
        print(
            f"  {name} ({c['epochs']} epochs): {c['time_ratio']:.2f}x, AutoAttack {c['aa']:.3f} "
            f"vs PGD-7 {c['aa_pgd']:.3f}: {'met' if c['met'] else 'missed'}"
        )
    agree = headline["suite_agreement"]
    print(
        "goal suite agrees with our PGD within 2 points on robust models: "
        + ", ".join(f"{d} {g:+.3f}" for d, g in agree["gaps"].items())
        + f": {'MET' if agree['met'] else 'MISSED'}"
    )
    print(
        f"robustness real (PGD-7 AA >= {REAL_MIN_AA}, +{REAL_MIN_GAIN} over undefended) at eps: "
        f"{real or 'none'}"
    )
    if goals["provisional"]:
        print("(provisional: AutoAttack's Square was cut; run without --quick for the real figure)")
    path = write_result(
        "bench_defenses" + ("-quick" if args.quick else "") + (f"-{args.tag}" if args.tag else ""),
        {
            "title": "Adversarial training on digits: cost vs clean training, AutoAttack accuracy",
            "parameters": {
                "eps": args.eps,
                "epochs": args.epochs,
                "pgd_train_steps": args.steps,
                "fast_epochs": args.fast_epochs,
                "step_size": "eps/4 (PGD training); FGSM-RS alpha 1.25 eps",
                "batch_size": 64,
                "samples": len(y),
                "aa_samples": args.aa_samples,
                "repeats": args.repeats,
                "threads": args.threads,
                "attack_threads": args.attack_threads,
                "attack_workers": args.jobs,
                "seed": args.seed,
                "quick": args.quick,
                "model": "train.model defaults (cnn, channels [16, 32], hidden [64], relu)",
                "autoattack": {
                    "full": args.square_iters is None,
                    "attacks": list(AA_ATTACKS),
                    "eps_step": "2 eps",
                    "batch_size": AA_BATCH,
                    "square_iters": args.square_iters or 5000,
                    "square_restarts": 1 if args.square_iters else 5,
                },
                "pgd20": {"steps": 20, "step_size": "2.5 eps / 20", "restarts": 1},
            },
            "torch": torch_facts(),
            "load_average": {"start": load_start, "end": load_average()},
            "split": {k: len(v[1]) for k, v in data.items()},
            "results": per_eps,
            "robustness_real_at_eps": real,
            "recommended_default_eps": max(real) if real else None,
            "goals": goals,
            "anchors": ANCHORS,
            "attack_phase_seconds": attack_seconds,
            "total_benchmark_seconds": total,
        },
    )
    print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


def _eps_verdicts(models: dict[str, Any]) -> dict[str, Any]:
    aa = {d: m["accuracy"]["autoattack"] for d, m in models.items()}
    candidates = {}
    for name in FAST:
        ratio = models[name]["time_ratio_vs_clean"]
        candidates[name] = {
            "epochs": models[name]["epochs"],
            "time_ratio": ratio,
            "aa": aa[name],
            "aa_pgd": aa["pgd"],
            "aa_gap_pgd_minus_fast": aa["pgd"] - aa[name],
            "time_met": ratio <= GOAL_TIME_RATIO,
            "robustness_met": aa["pgd"] - aa[name] <= GOAL_AA_GAP + 1e-9,
        }
        candidates[name]["met"] = (
            candidates[name]["time_met"] and candidates[name]["robustness_met"]
        )
    gaps = {d: m["pgd20_minus_independent_worst"] for d, m in models.items() if m["called_robust"]}
    return {
        "fast_defense": {
            "candidates": candidates,
            "met": any(c["met"] for c in candidates.values()),
        },
        "suite_agreement": {
            "gaps": gaps,
            "undefended_gap": models["none"]["pgd20_minus_independent_worst"],
            "met": all(abs(g) <= GOAL_AGREE + 1e-9 for g in gaps.values()),
        },
        "robustness_real": aa["pgd"] >= REAL_MIN_AA and aa["pgd"] - aa["none"] >= REAL_MIN_GAIN,
    }


def _print_table(per_eps: dict[str, Any], args: argparse.Namespace) -> None:
    print()
    print(
        f"{'eps':>5} {'defense':13} {'ep':>3} {'train s':>8} {'x clean':>7} {'clean':>6} "
        f"{'PGD-20':>6} {'APGD-CE':>7} {'APGD-T':>6} {'AA':>6} {'worst':>6} {'AA s':>6}"
    )
    for key, block in per_eps.items():
        for defense, m in block["models"].items():
            a = m["accuracy"]
            print(
                f"{key:>5} {defense:13} {m['epochs']:3d} {m['train_seconds_best']:8.2f} "
                f"{m['time_ratio_vs_clean']:7.2f} {a['clean']:6.3f} {a['pgd20']:6.3f} "
                f"{a['apgd_ce']:7.3f} {a['apgd_t']:6.3f} {a['autoattack']:6.3f} "
                f"{a['worst_case']:6.3f} {m['attack_seconds']['autoattack']:6.0f}"
            )
    print(
        f"(samples {args.samples}, AutoAttack on {args.aa_samples}; train s = best of "
        f"{args.repeats}; accuracies on the attacked samples)",
        file=sys.stdout,
    )


if __name__ == "__main__":
    main()
