"""bench_poisoning's backdoor part: the ``backdoor`` screen, ART's detectors, retraining, the scan.

Not a benchmark itself (the leading underscore keeps ``make bench`` from running it);
``bench_poisoning.py`` calls :func:`run` and :func:`goals`.

Per dataset and seed ``s`` of ``seeds`` (the screens' settings were chosen on seeds
100-104, the scan's on models of seeds >= 100; nothing here tunes them):

- **data screen**: ``poison(frame, kind="badnets", rate=0.05, seed=s, target=0)`` (a 2x2
  patch at full intensity on images, three features at mean + 4 sd on tables, rows of
  other classes relabelled 0); ``backdoor_screen(seed=s)`` on all rows: TPR (share of
  poisoned rows flagged), FPR (share of clean rows flagged), seconds, and the seconds of
  its preliminary training;
- **ART baselines** on an ART ``PyTorchClassifier`` of the same preliminary model (same
  data, settings and seed: the training is deterministic): ``ActivationDefence``
  (``detect_poison`` defaults: 2-means on PCA-10 of the activations, "smaller" analysis)
  and ``SpectralSignatureDefense`` (defaults: expected poison 0.33, eps multiplier 1.5);
- **retraining**: one stratified split per dataset (``split_rows`` with the default
  ``train`` seed and fractions on the clean labels), the pipeline's default ``train``
  section (PGD eps 0.1, 10 epochs), trained on the poisoned training rows, on them minus
  the rows the screen flagged (quarantine), and on the clean rows: clean accuracy on the
  clean test rows, attack success rate (ASR: share of the test rows of other classes
  predicted 0 once the trigger is applied); the poisoned training's seconds are "the
  pipeline's training time" the screen's seconds are held against;
- **clean-label** (report only): the trigger on 5 % of the rows, all of class 0, labels
  unchanged: the screen's TPR/FPR and the ASR of models trained on it and after quarantine;
- **clean data**: the share of the clean table's rows the screen flags.

Model scan: for each seed ``m`` of ``model_seeds``, a backdoored model (BadNets 5 % with
poison seed ``m``) and a clean one, both the pipeline's default training with seed ``m``
(its own split); ``scan_model`` on the clean test rows of that split: the share flagged of
each, the target found, the seconds, and each backdoored model's ASR.

Every training runs with ``threads`` torch threads (1: the machine is shared), the
screen's preliminary training too, so the time ratio compares like with like.
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
import torch

from aegis.attack.poison import apply_trigger, poison
from aegis.config import TrainParams
from aegis.screens.backdoor import backdoor_screen
from aegis.screens.model_scan import scan_model
from aegis.train.data import PreparedData, Split, infer_spec, prepare, to_tensors
from aegis.train.trainer import train_model

TARGET = 0
RATE = 0.05


def dataset(name: str):
    """The frame ``aegis data import-sklearn <name>`` writes (snake_case features, int64 label)."""
    from sklearn import datasets

    if name == "digits":
        from _digits import digits_frame

        return digits_frame()
    if name != "breast_cancer":
        raise ValueError(f"unknown dataset {name!r}: digits or breast_cancer")
    frame = datasets.load_breast_cancer(as_frame=True).frame
    frame = frame.rename(columns=lambda c: re.sub(r"[^0-9a-zA-Z]+", "_", c).strip("_").lower())
    frame = frame.rename(columns={"target": "label"})
    frame["label"] = frame["label"].astype("int64")
    return frame


def _mean(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k, v in rows[0].items() if isinstance(v, int | float) and k != "seed"]
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}


def _rates(flagged, truth, n: int) -> dict[str, float]:
    hit = np.zeros(n, dtype=bool)
    hit[np.asarray(flagged, dtype=np.int64)] = True
    poisoned = np.zeros(n, dtype=bool)
    poisoned[np.asarray(truth, dtype=np.int64)] = True
    return {
        "tpr": round(float(hit[poisoned].mean()), 4) if poisoned.any() else 0.0,
        "fpr": round(float(hit[~poisoned].mean()), 4),
        "flagged": int(hit.sum()),
    }


def _domain(spec) -> tuple[float, float] | None:
    return (0.0, 1.0) if spec.kind == "image" else None


@torch.no_grad()
def _acc_asr(model, spec, clean_frame, trigger, test: np.ndarray) -> dict[str, float]:
    """Clean test accuracy and the share of other classes' test rows the trigger sends to 0."""
    model.eval()
    x, y = to_tensors(clean_frame, test, spec)
    others = test[clean_frame["label"].to_numpy()[test] != TARGET]
    xt, _ = to_tensors(apply_trigger(clean_frame, trigger, others), others, spec)
    return {
        "acc": round(float((model(x).argmax(1) == y).float().mean()), 4),
        "asr": round(float((model(xt).argmax(1) == TARGET).float().mean()), 4),
    }


def _train(frame, split: Split, drop, threads: int):
    """The default ``train`` section on ``split``'s train/val rows minus ``drop``."""
    drop = np.asarray(drop, dtype=np.int64)
    train = np.setdiff1d(split.train, drop)
    val = np.setdiff1d(split.val, drop)
    part = Split(
        train,
        val,
        split.test,
        split.seed,
        split.test_fraction,
        split.val_fraction,
        split.test_digest,
    )
    params = TrainParams(threads=threads)
    spec = infer_spec(frame, train)
    started = time.perf_counter()
    model = train_model(PreparedData(frame, spec, part), params, progress=lambda _: None).model
    return model, spec, round(time.perf_counter() - started, 3)


def _art(frame, seed: int, threads: int) -> dict[str, dict[str, Any]]:
    """ART's ActivationDefence and SpectralSignatureDefense on the screen's preliminary model."""
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
    from art.estimators.classification import PyTorchClassifier

    from aegis.screens.backdoor import _features

    data = _features(frame, label="label", seed=seed, epochs=10, threads=threads, model=None)
    x = data["x"].reshape(-1, *data["shape"]).astype(np.float32)
    classes = int(data["y"].max()) + 1
    onehot = np.eye(classes, dtype=np.float32)[data["y"]]
    classifier = PyTorchClassifier(
        model=data["net"],
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=data["shape"],
        nb_classes=classes,
        clip_values=data["domain"],
    )
    out = {}
    for name, make in (
        ("art_activation", lambda: ActivationDefence(classifier, x, onehot)),
        ("art_spectral", lambda: SpectralSignatureDefense(classifier, x, onehot)),
    ):
        started = time.perf_counter()
        _, is_clean = make().detect_poison()
        out[name] = {
            "flagged": np.flatnonzero(np.asarray(is_clean) == 0),
            "seconds": round(time.perf_counter() - started, 3),
        }
    return out


def _data_part(name: str, frame, seeds: list[int], threads: int) -> dict[str, Any]:
    params = TrainParams(threads=threads)
    split = prepare(frame, params).split  # the pipeline's own split of these params
    clean_model, clean_spec, _ = _train(frame, split, [], threads)
    rows: dict[str, list[dict[str, Any]]] = {
        k: []
        for k in (
            "screen",
            "art_activation",
            "art_spectral",
            "retrain",
            "clean_label",
            "clean_data",
        )
    }
    for seed in seeds:
        attacked = poison(frame, kind="badnets", rate=RATE, seed=seed, target=TARGET)
        trigger = attacked.details["trigger"]
        started = time.perf_counter()
        screen = backdoor_screen(attacked.frame, seed=seed, threads=threads)
        seconds = round(time.perf_counter() - started, 3)
        rows["screen"].append(
            {
                "seed": seed,
                **_rates(screen.flagged, attacked.rows, len(frame)),
                "seconds": seconds,
                "prelim_train_seconds": screen.details["train_seconds"],
                "poisoned_classes": screen.details["poisoned_classes"],
            }
        )
        for method, found in _art(attacked.frame, seed, threads).items():
            rows[method].append(
                {
                    "seed": seed,
                    **_rates(found["flagged"], attacked.rows, len(frame)),
                    "seconds": found["seconds"],
                }
            )
        poisoned, spec, train_s = _train(attacked.frame, split, [], threads)
        quarantined, q_spec, _ = _train(attacked.frame, split, screen.flagged, threads)
        rows["retrain"].append(
            {
                "seed": seed,
                "pipeline_train_seconds": train_s,
                "poisoned": _acc_asr(poisoned, spec, frame, trigger, split.test),
                "quarantined": _acc_asr(quarantined, q_spec, frame, trigger, split.test),
                "clean": _acc_asr(clean_model, clean_spec, frame, trigger, split.test),
                "quarantined_rows": len(screen.flagged),
            }
        )
        cl = poison(frame, kind="clean-label", rate=RATE, seed=seed, target=TARGET)
        cl_screen = backdoor_screen(cl.frame, seed=seed, threads=threads)
        cl_model, cl_spec, _ = _train(cl.frame, split, [], threads)
        cl_q, cl_q_spec, _ = _train(cl.frame, split, cl_screen.flagged, threads)
        rows["clean_label"].append(
            {
                "seed": seed,
                **_rates(cl_screen.flagged, cl.rows, len(frame)),
                "asr_poisoned": _acc_asr(cl_model, cl_spec, frame, trigger, split.test)["asr"],
                "asr_quarantined": _acc_asr(cl_q, cl_q_spec, frame, trigger, split.test)["asr"],
                "asr_clean_model": rows["retrain"][-1]["clean"]["asr"],
            }
        )
        clean_screen = backdoor_screen(frame, seed=seed, threads=threads)
        rows["clean_data"].append(
            {
                "seed": seed,
                "flagged": len(clean_screen.flagged),
                "flagged_share": round(len(clean_screen.flagged) / len(frame), 4),
                "seconds": clean_screen.details["seconds"],
            }
        )
        print(
            f"  {name} seed {seed}: screen TPR {rows['screen'][-1]['tpr']} FPR "
            f"{rows['screen'][-1]['fpr']}, ASR after quarantine "
            f"{rows['retrain'][-1]['quarantined']['asr']}",
            flush=True,
        )
    out: dict[str, Any] = {}
    for key, values in rows.items():
        if key == "retrain":
            mean = {
                arm: _mean([v[arm] for v in values]) for arm in ("poisoned", "quarantined", "clean")
            }
            mean["pipeline_train_seconds"] = _mean(values)["pipeline_train_seconds"]
            mean["acc_drop_points_vs_clean"] = round(
                100 * (mean["clean"]["acc"] - mean["quarantined"]["acc"]), 2
            )
        else:
            mean = _mean(values)
        out[key] = {"per_seed": values, "mean": mean}
    screen_s = out["screen"]["mean"]["seconds"]
    out["timing"] = {
        "screen_seconds": screen_s,
        "prelim_train_seconds": out["screen"]["mean"]["prelim_train_seconds"],
        "pipeline_train_seconds": out["retrain"]["mean"]["pipeline_train_seconds"],
        "screen_over_pipeline_training": round(
            screen_s / out["retrain"]["mean"]["pipeline_train_seconds"], 3
        ),
        "screen_over_prelim_training": round(
            screen_s / out["screen"]["mean"]["prelim_train_seconds"], 3
        ),
    }
    return out


def _scan_part(frame, model_seeds: list[int], threads: int) -> dict[str, Any]:
    arms: dict[str, list[dict[str, Any]]] = {"backdoored": [], "clean": []}
    for m in model_seeds:
        params = TrainParams(seed=m, threads=threads)
        attacked = poison(frame, kind="badnets", rate=RATE, seed=m, target=TARGET)
        for arm, data in (("backdoored", attacked.frame), ("clean", frame)):
            prepared = prepare(data, params)
            model = train_model(prepared, params, progress=lambda _: None).model
            x, y = to_tensors(frame, prepared.split.test, prepared.spec)  # clean test rows
            result = scan_model(model, x, y, domain=_domain(prepared.spec), seed=m, threads=threads)
            figures = _acc_asr(
                model, prepared.spec, frame, attacked.details["trigger"], prepared.split.test
            )
            arms[arm].append(
                {
                    "seed": m,
                    "flagged": result.flagged,
                    "target": result.target,
                    "score": result.score,
                    "threshold": result.threshold,
                    "anomaly_index": result.details.get("anomaly_index"),
                    "norms": result.details["norms"],
                    "seconds": result.details["seconds"],
                    **figures,
                }
            )
    out = {}
    for arm, values in arms.items():
        flagged = sum(v["flagged"] for v in values)
        out[arm] = {
            "flagged": flagged,
            "of": len(values),
            "share": round(flagged / max(len(values), 1), 4),
            "targets_found": sum(v["target"] == TARGET for v in values),
            "seconds_mean": round(float(np.mean([v["seconds"] for v in values])), 3),
            "asr_mean": round(float(np.mean([v["asr"] for v in values])), 4),
            "per_seed": values,
        }
    return out


def run(
    *, seeds: list[int], datasets: list[str], model_seeds: list[int], threads: int = 1
) -> dict[str, Any]:
    """Every backdoor figure for each dataset (see the module docstring); JSON-able."""
    result: dict[str, Any] = {
        "seeds": seeds,
        "model_seeds": model_seeds,
        "threads": threads,
        "attack": {"kind": "badnets", "rate": RATE, "target": TARGET},
    }
    for name in datasets:
        frame = dataset(name)
        started = time.perf_counter()
        part = _data_part(name, frame, seeds, threads)
        part["model_scan"] = _scan_part(frame, model_seeds, threads)
        part["seconds"] = round(time.perf_counter() - started, 1)
        result[name] = part
    return result


def _goal(value, ok: bool, goal: str) -> dict[str, Any]:
    return {"value": value, "goal": goal, "met": bool(ok)}


def goals(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals, judged on digits (the other datasets are reported only)."""
    if "digits" not in result:
        return {}
    d = result["digits"]
    screen, retrain = d["screen"]["mean"], d["retrain"]["mean"]
    scan = d["model_scan"]
    return {
        "backdoor_screen_badnets": _goal(
            {"tpr": screen["tpr"], "fpr": screen["fpr"]},
            screen["tpr"] >= 0.95 and screen["fpr"] <= 0.02,
            "TPR >= 0.95 at FPR <= 0.02",
        ),
        "backdoor_quarantine_retrain": _goal(
            {
                "asr": retrain["quarantined"]["asr"],
                "acc_drop_points": retrain["acc_drop_points_vs_clean"],
            },
            retrain["quarantined"]["asr"] <= 0.02 and retrain["acc_drop_points_vs_clean"] <= 1.0,
            "ASR <= 2 % and clean accuracy within 1 point after quarantine and retraining",
        ),
        "backdoor_clean_rows": _goal(
            d["clean_data"]["mean"]["flagged_share"],
            d["clean_data"]["mean"]["flagged_share"] <= 0.01,
            "<= 1 % of clean rows flagged",
        ),
        "backdoor_model_scan": _goal(
            {
                "backdoored": f"{scan['backdoored']['flagged']}/{scan['backdoored']['of']}",
                "clean": f"{scan['clean']['flagged']}/{scan['clean']['of']}",
            },
            scan["backdoored"]["share"] >= 0.9
            and scan["clean"]["share"] <= 0.1
            and scan["backdoored"]["of"] >= 10
            and scan["clean"]["of"] >= 10,
            ">= 90 % of >= 10 backdoored models flagged, <= 1 in 10 clean ones",
        ),
        "backdoor_screen_time": _goal(
            d["timing"]["screen_over_pipeline_training"],
            d["timing"]["screen_over_pipeline_training"] <= 1.0,
            "data screen <= 1x the pipeline's training time",
        ),
    }
