"""bench_serve's detector part: feature squeezing against PGD and APGD, and a confidence baseline.

Not a benchmark itself (the leading underscore keeps ``make bench`` from running it);
``bench_serve.py`` calls :func:`run` and :func:`goals`; run alone it writes
``benchmarks/results/bench_serve_detector.json``.

Per dataset (digits; breast_cancer as the table case), defense (the default ``train``
section: PGD adversarial training at eps 0.1, and the same without a defense) and seed
``s``: the pipeline's own split and training (``prepare``, ``train_model`` with seed
``s``, one torch thread), then the detector exactly as evaluation calibrates it
(``held_out_detector``: on the validation split, target FPR ``evaluate.squeeze.target_fpr``)
and measured on the test split:

- **FPR**: the share of clean test inputs flagged (goal: <= 5 %);
- **TPR** on three attacks of every test input at the training eps (in [0, 1] pixels,
  std units for tables): ``pgd20_first`` (``pgd_examples``: the first misclassified
  iterate, as Aegis's evaluation attacks), ``pgd20_last`` (Madry et al.'s PGD-20 run to
  its last iterate: confidently wrong examples) and ``apgd_ce`` (ART's APGD-CE, 100
  iterations: its best-loss point); ``tpr_success`` over the examples whose attack
  succeeded (clean-correct, misclassified after), ``tpr_all`` over all of them;
- **baseline**, calibrated on the same validation inputs to the same target: flag an input
  whose top softmax probability is below the clean inputs' (conformal) quantile.

The squeezer settings are chosen on seeds ``SELECTION_SEEDS`` (PGD-trained models): the
setting with the best mean TPR on the attacks' successful examples among those keeping the
mean FPR <= 5 %; seeds 0-4 then report the configured defaults (``SqueezeParams()``) and
the selected setting. Timing: ``flags`` on 1 and 64 rows (median microseconds, one torch
thread), next to the plain forward pass the gateway makes anyway.

None of these attacks knows about the detector: an adaptive attacker who also
optimises through the squeezers evades feature squeezing (He et al. 2017).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch

from aegis.config import SqueezeParams, TrainParams
from aegis.evaluate.art_import import import_art
from aegis.evaluate.attacks import apgd_ce_examples, default_step_size, pgd_examples
from aegis.evaluate.gradients import ce_input_gradient
from aegis.evaluate.squeeze import SqueezeDetector, conformal_threshold, held_out_detector
from aegis.train.data import input_domain, prepare, to_tensors
from aegis.train.trainer import train_model

SELECTION_SEEDS = [100, 101, 102]
IMAGE_SETTINGS = [{"bits": b, "median": m} for m in (0, 2) for b in (2, 3, 4, 5)]
TABLE_SETTINGS = [{"table_step": s} for s in (0.1, 0.25, 0.5, 1.0)]
ATTACKS = ("pgd20_first", "pgd20_last", "apgd_ce")
PGD_STEPS = 20
FPR_GOAL = 0.05


def _frame(name: str):
    from _poison_backdoor import dataset

    return dataset(name)


def _project(x_adv, x, eps, domain):
    x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
    return x_adv if domain is None else x_adv.clamp(*domain)


def _pgd_last(model, x, y, *, eps: float, domain, seed: int) -> torch.Tensor:
    """Madry et al.'s PGD from a random start, every step taken: the last iterate."""
    gen = torch.Generator().manual_seed(seed)
    alpha = default_step_size(eps, PGD_STEPS)
    x_cur = _project(x + (torch.rand(x.shape, generator=gen) * 2 - 1) * eps, x, eps, domain)
    for _ in range(PGD_STEPS):
        grad, _ = ce_input_gradient(model, x_cur, y)
        x_cur = _project(x_cur + alpha * grad.sign(), x, eps, domain)
    return x_cur.detach()


@torch.no_grad()
def _predict(model, x) -> np.ndarray:
    return model(x).argmax(1).numpy()


def _attacked(model, x, y, *, eps: float, domain, seed: int) -> dict[str, dict[str, Any]]:
    """Each attack's examples and which succeeded (clean-correct, misclassified after)."""
    clean_ok = _predict(model, x) == y.numpy()
    examples = {
        "pgd20_first": pgd_examples(
            model, x, y, eps=eps, steps=PGD_STEPS, domain=domain, seed=seed
        )[0],
        "pgd20_last": _pgd_last(model, x, y, eps=eps, domain=domain, seed=seed),
        "apgd_ce": apgd_ce_examples(model, x, y, eps=eps, domain=domain, seed=seed + 1)[0],
    }
    return {
        name: {"x": adv, "success": clean_ok & (_predict(model, adv) != y.numpy())}
        for name, adv in examples.items()
    }


class _Confidence:
    """The baseline: flags inputs whose top softmax probability is below the clean quantile."""

    def __init__(self, model, x_val, target_fpr: float) -> None:
        self.threshold = conformal_threshold(self.scores(model, x_val), target_fpr)

    @staticmethod
    @torch.no_grad()
    def scores(model, x) -> np.ndarray:
        return 1.0 - torch.softmax(model(x), dim=1).amax(1).numpy().astype(np.float64)

    def flags(self, model, x) -> np.ndarray:
        return self.scores(model, x) > self.threshold


def _rates(detector, model, x_test, attacked) -> dict[str, Any]:
    out: dict[str, Any] = {"fpr": round(float(detector.flags(model, x_test).mean()), 4)}
    for name, attack in attacked.items():
        flagged, success = detector.flags(model, attack["x"]), attack["success"]
        out[name] = {
            "tpr_success": round(float(flagged[success].mean()), 4) if success.any() else None,
            "tpr_all": round(float(flagged.mean()), 4),
            "successes": int(success.sum()),
        }
    return out


def _case(name: str, frame, seed: int, defense: str, settings: list[dict]) -> dict[str, Any]:
    """One trained model: each detector setting's and the baseline's rates."""
    params = TrainParams(seed=seed, threads=1, defense=defense)
    prepared = prepare(frame, params)
    started = time.perf_counter()
    model = train_model(prepared, params, progress=lambda _: None).model
    train_s = round(time.perf_counter() - started, 2)
    frame_, spec, split = prepared
    x_val, _ = to_tensors(frame_, split.val, spec)
    x_test, y_test = to_tensors(frame_, split.test, spec)
    domain = input_domain(spec, params)
    started = time.perf_counter()
    attacked = _attacked(model, x_test, y_test, eps=params.epsilon, domain=domain, seed=seed)
    attack_s = round(time.perf_counter() - started, 2)
    row: dict[str, Any] = {"seed": seed, "train_seconds": train_s, "attack_seconds": attack_s}
    for setting in settings:
        squeeze = SqueezeParams(**setting)
        record = held_out_detector(
            model, kind=spec.kind, params=squeeze, x_val=x_val, x_test=x_test, seed=seed
        )
        detector = SqueezeDetector.from_json(
            {k: record[k] for k in SqueezeDetector.__dataclass_fields__}
        )
        figures = _rates(detector, model, x_test, attacked)
        assert abs(figures["fpr"] - record["test_fpr"]) < 1e-4  # the pipeline's own figure
        row[_label(setting)] = {"threshold": round(detector.threshold, 6), **figures}
        row.setdefault("_detector", detector)  # the first (default) setting's, for the timing
    baseline = _Confidence(model, x_val, SqueezeParams().target_fpr)
    row["confidence_baseline"] = {
        "threshold": round(baseline.threshold, 6),
        **_rates(baseline, model, x_test, attacked),
    }
    row["sizes"] = {"val": len(x_val), "test": len(x_test)}
    row["_model"], row["_x"] = model, x_test  # for the timing; dropped from the JSON
    return row


def _label(setting: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(setting.items()))


def _mean(rows: list[dict], key: str) -> dict[str, Any]:
    """Mean over seeds of one detector's FPR and per-attack TPRs."""
    out: dict[str, Any] = {"fpr": round(float(np.mean([r[key]["fpr"] for r in rows])), 4)}
    out["fpr_max"] = max(r[key]["fpr"] for r in rows)
    for attack in ATTACKS:
        out[attack] = {}
        for what in ("tpr_success", "tpr_all"):
            values = [r[key][attack][what] for r in rows if r[key][attack][what] is not None]
            out[attack][what] = round(float(np.mean(values)), 4) if values else None
        out[attack]["successes"] = int(sum(r[key][attack]["successes"] for r in rows))
    return out


def _selected(rows: list[dict], settings: list[dict]) -> tuple[dict, dict[str, Any]]:
    """The setting with the best mean success TPR over the attacks at mean FPR <= the goal."""
    table = {}
    for setting in settings:
        m = _mean(rows, _label(setting))
        tprs = [m[a]["tpr_success"] for a in ATTACKS if m[a]["tpr_success"] is not None]
        table[_label(setting)] = {**m, "mean_tpr_success": round(float(np.mean(tprs)), 4)}
    allowed = [s for s in settings if table[_label(s)]["fpr"] <= FPR_GOAL] or settings
    best = max(allowed, key=lambda s: table[_label(s)]["mean_tpr_success"])
    return best, table


def _median_us(fn, repeats: int) -> float:
    fn()  # warm-up: the first call builds caches
    times = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - started)
    return round(statistics.median(times) / 1000, 1)


def _timing(detector: SqueezeDetector, model, x) -> dict[str, float]:
    """Median microseconds of what the gateway runs, on the model as it serves it.

    ``inline`` (``serve.on_adversarial: refuse``): the rows and their squeezed copies in
    one pass (:meth:`SqueezeDetector.predict`); ``forward``: the plain pass every
    request makes (``flag``, ``off``); ``deferred_per_row``: ``flag``'s batched scoring
    of 1,024 answered rows, per row.
    """
    import copy

    from aegis.serve.served import on_kernels

    served = copy.deepcopy(model)
    if x.dim() == 4:  # as load_served serves image models
        served.to(memory_format=torch.channels_last)
    views = 1 + len(detector.squeezers())
    out = {}
    for rows, repeats in ((1, 3000), (64, 1000)):
        batch = x[:rows].contiguous()

        def forward(b=batch, n=rows):
            with torch.no_grad():
                on_kernels(n, served, b)

        out[f"inline_{rows}_rows_us"] = _median_us(
            lambda b=batch, n=rows: on_kernels(n * views, detector.predict, served, b), repeats
        )
        out[f"forward_{rows}_rows_us"] = _median_us(forward, repeats)
    big = x.repeat(1024 // len(x) + 1, *([1] * (x.dim() - 1)))[:1024].contiguous()
    with torch.no_grad():
        probs = torch.softmax(served(big), dim=1).numpy()
    per_batch = _median_us(
        lambda: on_kernels(1024 * (views - 1), detector.scores, served, big, probs=probs), 20
    )
    out["deferred_per_row_us"] = round(per_batch / 1024, 2)
    return out


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def _dataset(name: str, seeds: list[int], selection_seeds: list[int]) -> dict[str, Any]:
    frame = _frame(name)
    settings = IMAGE_SETTINGS if name == "digits" else TABLE_SETTINGS
    chosen = [_case(name, frame, s, "pgd", settings) for s in selection_seeds]
    best, sweep = _selected(chosen, settings)
    default = SqueezeParams()
    default_setting = (
        {"bits": default.bits, "median": default.median}
        if name == "digits"
        else {"table_step": default.table_step}
    )
    reported = [default_setting] + ([best] if best != default_setting else [])
    out: dict[str, Any] = {
        "selection": {"seeds": selection_seeds, "selected": best, "sweep": sweep},
        "default_setting": default_setting,
    }
    for defense in ("pgd", "none"):
        rows = []
        for seed in seeds:
            rows.append(_case(name, frame, seed, defense, reported))
            print(f"  {name} {defense} seed {seed}: " + _line(rows[-1], reported), flush=True)
        out[defense] = {
            "mean": {
                **{_label(s): _mean(rows, _label(s)) for s in reported},
                "confidence_baseline": _mean(rows, "confidence_baseline"),
            },
            "per_seed": _strip(rows),
        }
        if defense == "pgd":
            out["timing"] = _timing(rows[0]["_detector"], rows[0]["_model"], rows[0]["_x"])
    return out


def _line(row: dict, settings: list[dict]) -> str:
    parts = []
    for key in [*(_label(s) for s in settings), "confidence_baseline"]:
        r = row[key]
        parts.append(
            f"{key}: FPR {r['fpr']} APGD {r['apgd_ce']['tpr_success']} "
            f"PGD-last {r['pgd20_last']['tpr_success']}"
        )
    return "; ".join(parts)


def run(
    seeds: list[int],
    *,
    datasets: tuple[str, ...] = ("digits", "breast_cancer"),
    selection_seeds: list[int] = SELECTION_SEEDS,
) -> dict[str, Any]:
    """Every detector figure (see the module docstring); JSON-able."""
    import_art()  # in this thread: ART's first import is not thread-safe
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    try:
        result: dict[str, Any] = {
            "seeds": seeds,
            "train": {"defaults": "TrainParams() (pgd, eps 0.1) and defense none", "threads": 1},
            "squeeze_defaults": SqueezeParams().model_dump(),
            "attacks": {"eps": TrainParams().epsilon, "pgd_steps": PGD_STEPS, "apgd_steps": 100},
        }
        for name in datasets:
            result[name] = _dataset(name, seeds, selection_seeds)
        result["seconds"] = round(time.perf_counter() - started, 1)
        return result
    finally:
        torch.set_num_threads(threads)


def _goal(value, ok: bool, goal: str) -> dict[str, Any]:
    return {"value": value, "goal": goal, "met": bool(ok)}


def goals(result: dict[str, Any]) -> dict[str, Any]:
    """FPR <= 5 % on clean test inputs (digits, the default setting, both models) and cost."""
    out = {}
    for name in ("digits", "breast_cancer"):
        if name not in result:
            continue
        d = result[name]
        key = _label(d["default_setting"])
        for defense in ("pgd", "none"):
            fpr = d[defense]["mean"][key]["fpr"]
            out[f"detector_fpr_{name}_{defense}"] = _goal(
                fpr, fpr <= FPR_GOAL, "<= 5 % of clean test inputs flagged (mean over seeds)"
            )
        t = d["timing"]
        added = {rows: round(t[f"inline_{rows}_rows_us"] - t[f"forward_{rows}_rows_us"], 1)
                 for rows in (1, 64)}  # fmt: skip
        out[f"detector_cost_{name}"] = _goal(
            {"inline_added_1_row_us": added[1], "inline_added_64_rows_us": added[64],
             "deferred_per_row_us": t["deferred_per_row_us"]},
            added[1] <= 1000,
            "inline (refuse) adds <= 1 ms over the plain pass for 1 row (the gateway's "
            "sequential budget; 64 rows reported: a second pass of the model); flag defers it",
        )  # fmt: skip
    return out


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import quiet_environment, write_result
    from _digits import quiet_warnings

    quiet_environment()
    quiet_warnings()
    quick = "--quick" in sys.argv
    figures = run(
        [0, 1] if quick else [0, 1, 2, 3, 4],
        selection_seeds=[100] if quick else SELECTION_SEEDS,
    )
    figures["goals"] = goals(figures)
    path = write_result("bench_serve_detector" + ("-quick" if quick else ""), figures)
    for goal_name, goal in figures["goals"].items():
        verdict = "met    " if goal["met"] else "NOT MET"
        print(f"{verdict} {goal_name}: {goal['value']} ({goal['goal']})")
    print(f"wrote {path}")
