"""Poisoning and backdoor defenses against our own attacks, next to the maintained tools.

What is measured (issue 12), on digits and breast_cancer, seeds 0-4 (the screens'
thresholds were chosen on seeds 100-104; nothing here tunes them):

- **label screens** (``_poison_labels``): ``label-issue`` against plain cleanlab
  (``find_label_issues`` on out-of-fold SVC probabilities) on random flips 5 %, a
  pair flip (half of class 1 -> 7 on digits, 0 -> 1 on breast_cancer), boundary
  flips 5 % and clean data: precision, recall, F1, clean rows flagged, seconds;
- **label diff** (``_poison_pipeline.label_diff_cases``): ``label-changed`` on a
  delivery of previously accepted rows relabelled (boundary and random 5 %), alone
  and with one or two pixels of each relabelled row changed;
- **backdoors** (``_poison_backdoor``): the ``backdoor`` data screen against ART's
  ActivationDefence and SpectralSignature on BadNets 5 % (2x2 patch), accuracy and
  attack success rate after quarantine and retraining, clean-label figures, and the
  model scan over backdoored and clean models;
- **losses** (``_poison_pipeline.loss_study``, digits): ``train.loss`` ce / gce / sce on
  5 % flips, without and with the screens;
- **clean data** (``_poison_pipeline.clean_data``): every data screen on clean rows:
  the share quarantined, accuracy with and without them, the screens' time against
  the training's.

Run: ``.venv/bin/python benchmarks/bench_poisoning.py [--quick]``. Writes
``benchmarks/results/bench_poisoning.json`` (``bench_poisoning-quick.json`` with
``--quick``: 2 seeds, digits only, fewer models, a smoke run). Nothing is asserted;
each goal's verdict is in the JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import quiet_environment, write_result
from _digits import quiet_warnings

SEEDS = [0, 1, 2, 3, 4]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, digits only: a smoke run")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["labels", "diff", "backdoor", "losses", "clean"])  # fmt: skip
    return parser.parse_args()


def _goal(value, ok: bool, goal: str) -> dict[str, Any]:
    return {"value": value, "goal": goal, "met": bool(ok)}


def _label_goals(labels: dict[str, Any]) -> dict[str, Any]:
    attacks = labels["datasets"]["digits"]["attacks"]
    goals = {}
    flip = attacks.get("flip_5pct", {}).get("label-issue", {}).get("mean")
    if flip:
        goals["flips_5pct"] = _goal(
            {"precision": flip["precision"], "recall": flip["recall"], "f1": flip["f1"]},
            flip["f1"] >= 0.95 and (flip["precision"] or 0) >= 0.95,
            "F1 >= 0.95 with P >= 0.95",
        )
    pair = next((v for k, v in attacks.items() if k.startswith("pair")), {}).get("label-issue")
    if pair:
        m = pair["mean"]
        goals["pair_half_1_to_7"] = _goal(
            {"precision": m["precision"], "recall": m["recall"]},
            m["recall"] >= 0.6 and (m["precision"] or 0) >= 0.8,
            "R >= 0.6 at P >= 0.8",
        )
    clean = attacks.get("clean", {}).get("label-issue", {}).get("mean")
    if clean:
        goals["label_issue_clean_rows"] = _goal(
            clean["clean_flagged_share"], clean["clean_flagged_share"] <= 0.01, "<= 1 %"
        )
    return goals


def _diff_goals(diff: dict[str, Any]) -> dict[str, Any]:
    caught = {k: v["recall"] for k, v in diff.items()}
    return {
        "label_diff_relabelled_rows": _goal(
            caught,
            all(v == 1.0 for v in caught.values()),
            "100 % of relabelled previously-signed rows (also with 1-2 pixels changed)",
        )
    }


def _clean_goals(clean: dict[str, Any]) -> dict[str, Any]:
    goals = {}
    for name, figures in clean.items():
        goals[f"clean_{name}_quarantined"] = _goal(
            figures["flagged_share"], figures["flagged_share"] <= 0.01, "<= 1 % of clean rows"
        )
        goals[f"clean_{name}_accuracy"] = _goal(
            figures["acc_drop_points"], figures["acc_drop_points"] <= 1.0,
            "accuracy after screening within 1 point",
        )  # fmt: skip
        goals[f"clean_{name}_time_ratio"] = _goal(
            figures["time_ratio"], figures["time_ratio"] <= 1.0, "screens <= 1x training time"
        )
    return goals


_SECTIONS = {"labels": "labels", "diff": "label_diff", "backdoor": "backdoor",
             "losses": "losses", "clean": "clean"}  # fmt: skip


def _merge_skipped(name: str, result: dict, goals: dict, skipped: list[str]):
    """Keeps the sections a ``--skip`` left out from the last run's JSON (run in parts)."""
    import json

    path = Path(__file__).resolve().parent / "results" / f"{name}.json"
    if not skipped or not path.is_file():
        return result, goals
    earlier = json.loads(path.read_text())
    for part in skipped:
        key = _SECTIONS[part]
        if key in earlier:
            result[key] = earlier[key]
            result.setdefault("parts_from_earlier_run", []).append(key)
    kept = {k: v for k, v in earlier.get("goals", {}).items() if k not in goals}
    return result, {**goals, **kept}


def main() -> None:
    args = parse_args()
    quiet_environment()
    quiet_warnings()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import _poison_backdoor
    import _poison_labels
    import _poison_pipeline
    from _poison_labels import dataset

    seeds = SEEDS[:2] if args.quick else SEEDS
    datasets = ["digits"] if args.quick else ["digits", "breast_cancer"]
    model_seeds = list(range(10, 14)) if args.quick else list(range(10, 22))
    result: dict[str, Any] = {"seeds": seeds, "note": _poison_pipeline.SEEDS_NOTE}
    result["quick"] = args.quick
    goals: dict[str, Any] = {}
    started = time.perf_counter()
    if "labels" not in args.skip:
        print("label screens ...", flush=True)
        result["labels"] = _poison_labels.run(seeds=seeds, datasets=datasets)
        goals |= _label_goals(result["labels"])
    if "diff" not in args.skip:
        print("label diff ...", flush=True)
        result["label_diff"] = _poison_pipeline.label_diff_cases(dataset("digits"), seeds=seeds)
        goals |= _diff_goals(result["label_diff"])
    if "backdoor" not in args.skip:
        print("backdoors ...", flush=True)
        result["backdoor"] = _poison_backdoor.run(
            seeds=seeds, datasets=datasets, model_seeds=model_seeds
        )
        goals |= _poison_backdoor.goals(result["backdoor"])
    if "losses" not in args.skip:
        print("noise-robust losses ...", flush=True)
        result["losses"] = _poison_pipeline.loss_study(dataset("digits"), seeds=seeds)
    if "clean" not in args.skip:
        print("screens on clean data ...", flush=True)
        result["clean"] = {n: _poison_pipeline.clean_data(dataset(n), seeds=seeds)
                           for n in datasets}  # fmt: skip
        goals |= _clean_goals(result["clean"])
    name = "bench_poisoning-quick" if args.quick else "bench_poisoning"
    result, goals = _merge_skipped(name, result, goals, args.skip)
    result["goals"] = goals
    result["seconds"] = round(time.perf_counter() - started, 1)
    path = write_result(name, result)
    for name, goal in goals.items():
        print(f"{'met    ' if goal['met'] else 'NOT MET'} {name}: {goal['value']} ({goal['goal']})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
