"""Production monitoring: false alarms and detection of the monitor's calibrated signals.

The model is the pipeline's digits CNN (``aegis.train``, 10 epochs, one per seed); the
reference is fitted as the evaluate stage fits it (``calibrate_monitor``) on one random
half of the test split (its outputs, OOD scores and logged inputs; permutation null,
per-window alpha 0.01 over all signals); **every figure below is measured on windows
from the other half**, each drawn without replacement, 400 per case and seed (2,000 per
case over seeds 0-4). Inputs are logged as ``serve.log_inputs`` says: ``alarmed`` with
the default ``summary`` (each row's mean, minimum and maximum), ``alarmed_full_inputs``
with ``full`` (every pixel).

Cases (noise in model-input units, i.e. pixels / 16):

- ``clean`` (n = 50 and 100): false alarms, with Clopper-Pearson 95 % bounds;
- ``noise``: Gaussian noise sigma 0.3 on every row, clipped to [0, 1], n = 50;
- ``label_shift``: rows of classes 0-4 only, n = 50;
- ``inverted``: 10 % of the rows inverted (1 - x), n = 100;
- ``backdoor``: a BadNets-backdoored model (``aegis attack poison --kind badnets``,
  10 % of the training rows, target 0) serving windows where 10 % of the rows carry
  its trigger, n = 100; its reference is its own, as its release would carry.

Baseline in the same run (the issue's anchor): per-class KS tests on the softmax
(scipy's ``ks_2samp``) with a Bonferroni correction at nominal alpha 0.05, and
scipy's chi-squared test on labels at 0.05, on the same windows.

Run: ``.venv/bin/python benchmarks/bench_monitor.py`` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from _common import quiet_environment, write_result
from _digits import digits_frame, prepared_digits, quiet_warnings, split_tensors

SEEDS = [0, 1, 2, 3, 4]
WINDOWS = 400  # per case and seed
ALPHA = 0.01
LOG_INPUTS = ("summary", "full")  # the default serve.log_inputs first: the headline figures
CASES = {  # name -> (window, goal: a share of windows alarmed, at most for clean)
    "clean_50": (50, ("false alarms <=", 0.01)),
    "clean_100": (100, ("false alarms <=", 0.01)),
    "noise": (50, ("detected >=", 0.95)),
    "label_shift": (50, ("detected >=", 0.99)),
    "inverted": (100, ("detected >=", 0.90)),
    "backdoor": (100, ("detected >=", 0.90)),
}


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> list[float]:
    from scipy import stats

    a = (1 - confidence) / 2
    low = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - a, k + 1, n - k))
    return [round(low, 5), round(high, 5)]


def baseline(probs_ref: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per-class KS at Bonferroni 0.05, or chi-squared on labels at 0.05: alarms per window."""
    from scipy import stats

    classes = probs_ref.shape[1]
    ref_counts = np.bincount(probs_ref.argmax(1), minlength=classes) + 0.5
    out = np.zeros(len(probs), dtype=bool)
    for w, window in enumerate(probs):
        ks = min(stats.ks_2samp(probs_ref[:, c], window[:, c]).pvalue for c in range(classes))
        counts = np.bincount(window.argmax(1), minlength=classes)
        expected = ref_counts / ref_counts.sum() * len(window)
        chi = stats.chisquare(counts, expected).pvalue
        out[w] = ks < 0.05 / classes or chi < 0.05
    return out


def main() -> None:
    quiet_environment()
    quiet_warnings()
    torch.set_num_threads(1)
    from aegis.attack.poison import apply_trigger, poison
    from aegis.config import TrainParams
    from aegis.evaluate.extraction import ExtractionReference, calibrate_extraction
    from aegis.evaluate.input_shift import InputBins, logged_features
    from aegis.evaluate.monitoring import (
        MonitorReference,
        breaches,
        calibrate_monitor,
        model_outputs,
        signals,
    )
    from aegis.train.data import prepare, to_tensors
    from aegis.train.trainer import train_model

    tallies: dict[str, dict] = {name: {"windows": 0, "alarms": 0, "baseline": 0,
                                       "by_signal": {}, "runs": []} for name in CASES}  # fmt: skip
    for seed in SEEDS:
        params = TrainParams(seed=seed, epochs=10, defense="none", threads=1)
        clean = prepared_digits(params)
        frame, spec, split = clean
        tensors = split_tensors(clean)
        models = {"clean": train_model(clean, params, progress=lambda _: None).model.eval()}
        poisoned = poison(digits_frame(), kind="badnets", rate=0.1, seed=seed, target=0)
        dirty = prepare(poisoned.frame, params)
        models["backdoor"] = train_model(dirty, params, progress=lambda _: None).model.eval()
        # random halves: the split's indices are sorted, and digits are stored writer by
        # writer, so its first and second halves were different writers (a real shift,
        # which alarmed 1.7 % of "clean" windows at n = 100)
        half, test = len(split.test) // 2, np.random.default_rng(seed).permutation(split.test)
        calib_rows, eval_rows = test[:half], test[half:]
        x_eval, y_eval = to_tensors(frame, eval_rows, spec)
        x_calib, _ = to_tensors(frame, calib_rows, spec)
        rng = np.random.default_rng(1000 + seed)
        trigger = poisoned.details["trigger"]
        x_trig, _ = to_tensors(apply_trigger(frame, trigger, eval_rows), eval_rows, spec)
        outputs = {}
        for kind, net in models.items():  # what the evaluate stage computes per release
            extraction = ExtractionReference.from_json(calibrate_extraction(
                net, x_fit=tensors["train"][0], y_fit=tensors["train"][1],
                x_calib=tensors["val"][0], streams=1, length=200))  # fmt: skip

            def ood(x, net=net, ref=extraction):
                return ref.scores(net, x)

            outputs[kind] = (ood, *model_outputs(net, x_calib, ood=ood))
        for name, (window, _) in CASES.items():
            kind = "backdoor" if name == "backdoor" else "clean"
            net = models[kind]
            ood, probs_ref, ood_ref = outputs[kind]
            x = _case_inputs(name, x_eval, y_eval, x_trig, window, rng)
            probs, scores = model_outputs(net, x.reshape(-1, *x.shape[2:]), ood=ood)
            probs = probs.reshape(WINDOWS, window, -1)
            scores = scores.reshape(WINDOWS, window)
            alarms = {}
            for mode in LOG_INPUTS:  # what the gateway logs of inputs: serve.log_inputs
                # the gateway logs rows in dataset units: pixels, model inputs * scale
                feats_ref = logged_features(_rows(x_calib, spec), mode)
                bins = InputBins.fit(feats_ref, mode)
                ref = MonitorReference.from_json(calibrate_monitor(
                    probs=probs_ref, ood=ood_ref, inputs=bins, features=feats_ref,
                    window=window, alpha=ALPHA, seed=seed))  # fmt: skip
                feats = logged_features(_rows(x.reshape(-1, *x.shape[2:]), spec), mode)
                values = signals(ref, probs, probs.argmax(axis=2), scores,
                                 inputs=feats.reshape(WINDOWS, window, -1))  # fmt: skip
                hits_mode = breaches(ref, values)
                alarms[mode] = np.any(np.stack(list(hits_mode.values())), axis=0)
                if mode == LOG_INPUTS[0]:
                    hits = hits_mode
            alarm = alarms[LOG_INPUTS[0]]
            base = baseline(probs_ref, probs)  # against the same reference rows
            t = tallies[name]
            t["windows"] += WINDOWS
            t["alarms"] += int(alarm.sum())
            t["baseline"] += int(base.sum())
            t["full"] = t.get("full", 0) + int(alarms["full"].sum())
            for signal, hit in hits.items():
                t["by_signal"][signal] = t["by_signal"].get(signal, 0) + int(hit.sum())
            t["runs"].append({"seed": seed, "alarmed": round(float(alarm.mean()), 4),
                              "alarmed_full_inputs": round(float(alarms["full"].mean()), 4),
                              "baseline": round(float(base.mean()), 4)})  # fmt: skip
            print(name, t["runs"][-1], file=sys.stderr)
    results = {}
    for name, t in tallies.items():
        window, (kind, goal) = CASES[name]
        rate = t["alarms"] / t["windows"]
        met = rate <= goal if kind.startswith("false") else rate >= goal
        results[name] = {
            "window": window, "windows": t["windows"], "alarmed": round(rate, 4),
            "clopper_pearson_95": clopper_pearson(t["alarms"], t["windows"]),
            "by_signal": {s: round(v / t["windows"], 4) for s, v in t["by_signal"].items()},
            "alarmed_full_inputs": round(t["full"] / t["windows"], 4),
            "baseline_alarmed": round(t["baseline"] / t["windows"], 4),
            "runs": t["runs"], "goal": f"{kind} {goal}", "met": bool(met),
        }  # fmt: skip
    path = write_result("bench_monitor", {
        "seeds": SEEDS, "alpha_per_window": ALPHA, "windows_per_case_and_seed": WINDOWS,
        "log_inputs": {"alarmed": LOG_INPUTS[0], "alarmed_full_inputs": "full"},
        "baseline": "per-class KS (scipy ks_2samp), Bonferroni 0.05, or chi-squared on "
                    "labels at 0.05, on the same windows",
        **results})  # fmt: skip
    print(f"wrote {path}")


def _rows(x: torch.Tensor, spec) -> np.ndarray:
    """Model inputs back in dataset units (pixels): what a client sends and the log keeps."""
    return x.reshape(len(x), -1).double().numpy() * spec.scale


def _case_inputs(name, x_eval, y_eval, x_trig, window, rng) -> torch.Tensor:
    """``(WINDOWS, window, ...)`` model inputs of one case, from the evaluation half."""
    pool = np.flatnonzero(y_eval.numpy() < 5) if name == "label_shift" else np.arange(len(x_eval))
    # without replacement: a subset of a random sample is a random sample of the population,
    # so each window is what production could send; drawn with replacement, every window
    # would repeat the half's own deviation from the reference (seen: 3-4 % false alarms)
    picks = np.stack([rng.choice(pool, size=window, replace=False) for _ in range(WINDOWS)])
    x = x_eval[torch.from_numpy(picks)].clone()
    if name == "noise":
        noise = torch.from_numpy(rng.normal(0.0, 0.3, x.shape).astype(np.float32))
        x = (x + noise).clamp(0.0, 1.0)
    elif name in ("inverted", "backdoor"):
        bad = torch.from_numpy(rng.random((WINDOWS, window)) < 0.10)
        changed = 1.0 - x if name == "inverted" else x_trig[torch.from_numpy(picks)]
        x = torch.where(bad.reshape(*bad.shape, *([1] * (x.dim() - 2))), changed, x)
    return x


if __name__ == "__main__":
    main()
