"""Model theft: how soon the gateway's extraction monitor flags our own attackers, on digits.

The victim is the pipeline's digits CNN (``aegis.train``, no defense, 10 epochs, seed 0);
the monitor's reference is fitted exactly as the evaluate stage fits it
(``calibrate_extraction``: class statistics and PRADA's delta on the training split, the
OOD threshold on the validation split). Everything measured uses the **test split** or
the attackers' own queries, through ``KeyState.observe_checked`` (the statistics
the gateway runs), so "flagged at query k" is the k-th row answered.

Cases (seeds 0-4 for attacks; 20 benign streams, seeds 100-119):

- ``jacobian``: Papernot's augmentation, fixed settings (seed set 20 pool rows, lam 0.1
  of each feature's range, an MLP substitute), 200 queries;
- ``knockoff``: 300 crops of scikit-learn's sample photographs;
- ``benign``: the test split replayed in random order, 1,200 queries each.

Baseline in the same run: PRADA alone (the distance test without the OOD rate), the
anchor the issue measured. Also the monitor's cost per answered row (batched, as the
flusher runs it). The watermark's figures (copies of four families at three query
budgets, 15 independent models as the null, the accuracy cost) come from
``_theft_watermark.py``, on the same victim.

Run: ``.venv/bin/python benchmarks/bench_theft.py`` (about 9 minutes on 2 cores).
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch
from _common import quiet_environment, write_result
from _digits import prepared_digits, quiet_warnings, split_tensors
from _theft_watermark import watermark_cases

ATTACK_SEEDS = [0, 1, 2, 3, 4]
BENIGN_SEEDS = list(range(100, 120))
GOALS = {"jacobian": 100, "knockoff": 300}


def main() -> None:
    quiet_environment()
    quiet_warnings()
    torch.set_num_threads(1)
    from aegis.attack.extract import extract
    from aegis.attack.oracle import model_predictor
    from aegis.config import TrainParams
    from aegis.evaluate.extraction import (
        ExtractionReference,
        KeyState,
        benign_streams,
        calibrate_extraction,
    )
    from aegis.serve.served import model_inputs
    from aegis.train.trainer import train_model

    params = TrainParams(seed=0, epochs=10, defense="none", threads=1)
    prepared = prepared_digits(params)
    net = train_model(prepared, params, progress=lambda _: None).model.eval()
    tensors = split_tensors(prepared)
    (x_train, y_train), (x_val, _), _ = tensors["train"], tensors["val"], tensors["test"]
    record = calibrate_extraction(net, x_fit=x_train, y_fit=y_train, x_calib=x_val)
    ref = ExtractionReference.from_json(record)
    spec = prepared.spec
    frame = prepared.frame
    rows_of = frame[list(spec.feature_columns)].to_numpy(np.float64)
    test_rows = rows_of[prepared.split.test]

    oracle = model_predictor(net, spec)

    def flagged_at(rows: np.ndarray, *, ood: bool = True) -> int | None:
        x = torch.from_numpy(model_inputs(rows, spec))
        labels = oracle(rows)
        far = ref.scores(net, x) > ref.ood_threshold
        if not ood:
            far = np.zeros(len(rows), dtype=bool)
        state = KeyState()  # tested as the gateway tests: every 4th distance
        state.observe_checked(x.reshape(len(x), -1).numpy(), labels, far, ref)
        return state.flagged_at

    results: dict[str, dict] = {}
    for kind, budget in (("jacobian", 200), ("knockoff", 300)):
        runs = []
        for seed in ATTACK_SEEDS:
            run = extract(kind, oracle, queries=budget, pool=test_rows, classes=10, seed=seed)
            runs.append({"seed": seed, "flagged_at": flagged_at(run.rows),
                         "prada_only_flagged_at": flagged_at(run.rows, ood=False)})  # fmt: skip
            print(kind, runs[-1], file=sys.stderr)
        worst = [r["flagged_at"] for r in runs]
        results[kind] = {
            "queries": budget, "runs": runs, "settings": run.settings,
            "goal": f"flagged within {GOALS[kind]} queries",
            "met": all(v is not None and v <= GOALS[kind] for v in worst),
        }  # fmt: skip
    benign = []
    for seed in BENIGN_SEEDS:
        order = benign_streams(len(test_rows), streams=1, length=1200, seed=seed)[0]
        benign.append({"seed": seed, "flagged_at": flagged_at(test_rows[order])})
    alarms = sum(b["flagged_at"] is not None for b in benign)
    results["benign"] = {"streams": len(benign), "length": 1200, "false_alarms": alarms,
                         "runs": benign, "goal": "0 false alarms", "met": alarms == 0}  # fmt: skip
    # the monitor's cost per answered row, batched per flush as the gateway runs it
    batch = test_rows[:256]
    x = torch.from_numpy(model_inputs(batch, spec))
    costs = []
    for _ in range(5):
        start = time.perf_counter()
        far = ref.scores(net, x) > ref.ood_threshold
        KeyState().observe_checked(x.reshape(len(x), -1).numpy(), oracle(batch), far, ref)
        costs.append((time.perf_counter() - start) / len(batch) * 1e6)
    results["monitor_cost_us_per_row"] = round(statistics.median(costs), 1)
    results["watermark"] = watermark_cases(prepared=prepared, oracle=oracle, seeds=ATTACK_SEEDS)
    results["reference"] = {k: v for k, v in record.items() if k not in ("means", "precision")}
    path = write_result("bench_theft", {"seeds": {"attacks": ATTACK_SEEDS, "benign": BENIGN_SEEDS},
                                        "baseline": "prada_only_flagged_at (distance test alone)",
                                        **results})  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
