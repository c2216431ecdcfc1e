"""The watermark's figures for ``bench_theft.py``: kept by copies, absent from independents.

Not a benchmark itself (the leading underscore keeps ``make bench`` from running it).

The gateway's own :class:`aegis.serve.watermark.Watermarker` (rate 0.5 %, a secret fixed
per seed) marks the attacker's queries; the attacker trains each surrogate family on the
answers served; :func:`aegis.serve.evidence.verify_watermark` (at most 100 recorded
inputs, the first asked first) gives the p-value, under a null agreement measured here:

- **independent models**: 15 models that never saw our answers, trained on the training
  split's true labels (the strongest null: our own data): the four surrogate families
  with seeds 0-2, and the pipeline's CNN retrained with seeds 1-3. Their agreement with
  the served wrong labels, pooled over every seed's watermarks, gives the 99 %
  Clopper-Pearson upper bound; ``p0 = max(1 / (classes - 1), that bound)``.
- **the attacker** asks "natural" queries beyond its pool: rows of the test split (never
  trained on) shifted by at most a pixel with Gaussian noise (sigma 1 of the 0-16 pixel
  range), so its budget is not capped by the 360 rows it holds; budgets 2,000, 5,000
  and 20,000 queries (0.5 % of 20,000 is the 100 watermarks one verification asks).
- **accuracy cost**: the share of answers the watermark changed over every attacker
  stream (distinct inputs, as customers send), and the served accuracy on the test split
  against the model's.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np

RATE = 0.005
BUDGETS = (2000, 5000, 20000)
FAMILIES = ("mlp", "cnn", "forest", "logreg")
INDEPENDENT_SEEDS = (0, 1, 2)
CNN_SEEDS = (1, 2, 3)
TARGET_P = 1e-6
MAX_QUERIES = 100


def augmented_queries(pool: np.ndarray, n: int, *, side: int, seed: int) -> np.ndarray:
    """``n`` rows of ``pool`` (square images), each rolled by at most a pixel plus noise."""
    rng = np.random.default_rng(seed)
    images = pool.reshape(-1, side, side)
    low, high = float(pool.min()), float(pool.max())
    picks = rng.integers(len(images), size=n)
    shifts = rng.integers(-1, 2, size=(n, 2))
    out = np.empty((n, side * side))
    for i in range(n):
        image = np.roll(images[picks[i]], tuple(shifts[i]), axis=(0, 1))
        out[i] = image.ravel()
    return np.clip(out + rng.normal(0.0, 1.0, out.shape), low, high)


def clopper_pearson_upper(k: int, n: int, confidence: float = 0.99) -> float:
    from scipy import stats

    return 1.0 if k >= n else float(stats.beta.ppf(confidence, k + 1, n - k))


def queries_for(target: float, keep: float, p0: float, rate: float) -> int | None:
    """Queries an attacker must ask before ``keep`` of its watermarks reach ``target``.

    The expected count: the smallest n watermarks whose binomial tail at
    ``round(keep * n)`` matches is below ``target``, over the rate. None when no n up to
    the verification cap of 100 reaches it.
    """
    from aegis.serve.evidence import binomial_p

    for n in range(1, MAX_QUERIES + 1):
        if binomial_p(round(keep * n), n, p0) <= target:
            return int(np.ceil(n / rate))
    return None


def watermark_cases(*, prepared, oracle, seeds: list[int]) -> dict:
    """Every watermark figure of the benchmark (see the module docstring)."""
    from aegis.attack.oracle import model_predictor
    from aegis.attack.surrogate import fit_surrogate, image_side
    from aegis.config import TrainParams
    from aegis.serve.evidence import WatermarkRecord, verify_watermark
    from aegis.serve.watermark import Watermarker, input_sha256, served_answers
    from aegis.train.trainer import train_model

    frame, spec, split = prepared
    rows_of = frame[list(spec.feature_columns)].to_numpy(np.float64)
    truth = frame[spec.label_column].to_numpy(np.int64)
    test_rows = rows_of[split.test]
    side = image_side(rows_of.shape[1])
    classes = 10

    # one stream and one set of watermark records per seed; budgets are its prefixes
    streams = []
    for seed in seeds:
        secret = hashlib.sha256(f"bench-watermark-{seed}".encode()).digest()
        marker = Watermarker(secret, rate=RATE, classes=classes)
        rows = augmented_queries(test_rows, max(BUDGETS), side=side, seed=seed)
        labels = oracle(rows)
        marks = marker.mark(rows, labels)
        served, _ = served_answers(labels, np.eye(classes)[labels], marks)
        records = [
            WatermarkRecord(rows[i], input_sha256(rows[i]), int(w), int(labels[i]), "v", classes)
            for i, w in zip(marks.rows.tolist(), marks.labels.tolist(), strict=True)
        ]
        streams.append({"seed": seed, "rows": rows, "labels": labels, "served": served,
                        "marks": marks, "records": records, "marker": marker})  # fmt: skip

    # the null: independent models on every seed's watermarks
    independents = [
        (f"{family}-seed{s}", fit_surrogate(family, rows_of[split.train], truth[split.train],
                                            classes=classes, seed=s).predict)
        for family in FAMILIES for s in INDEPENDENT_SEEDS
    ]  # fmt: skip
    for s in CNN_SEEDS:
        params = TrainParams(seed=s, epochs=10, defense="none", threads=1)
        net = train_model(prepared, params, progress=lambda _: None).model.eval()
        independents.append((f"pipeline-cnn-seed{s}", model_predictor(net, spec)))
    all_records = [r for stream in streams for r in stream["records"]]
    inputs = np.stack([r.row for r in all_records])
    wrong = np.array([r.served for r in all_records])
    agreements = {name: int((predict(inputs) == wrong).sum()) for name, predict in independents}
    pooled = sum(agreements.values())
    trials = len(independents) * len(all_records)
    bound = clopper_pearson_upper(pooled, trials)
    p0 = max(1 / (classes - 1), bound)

    def verify(records, predict):
        return verify_watermark(records, predict, classes=classes, max_queries=MAX_QUERIES,
                                null_agreement=bound)  # fmt: skip

    null_runs = []
    for stream in streams:
        for name, predict in independents:
            verdict = verify(stream["records"], predict)
            null_runs.append({"model": name, "seed": stream["seed"], **verdict.to_json()})
    print(f"watermark null: {pooled}/{trials} agreements, 99% bound {bound:.4f}", file=sys.stderr)

    # the copies: every family at every budget
    copies = {family: [] for family in FAMILIES}
    for stream in streams:
        for budget in BUDGETS:
            cut = stream["marks"].rows < budget
            records = [r for r, keep in zip(stream["records"], cut, strict=True) if keep]
            for family in FAMILIES:
                surrogate = fit_surrogate(family, stream["rows"][:budget],
                                          stream["served"][:budget], classes=classes,
                                          seed=stream["seed"])  # fmt: skip
                run = {"seed": stream["seed"], "budget": budget, "watermarks": len(records),
                       "fidelity": round(float((surrogate.predict(test_rows)
                                                == oracle(test_rows)).mean()), 4)}  # fmt: skip
                if records:
                    run |= verify(records, surrogate.predict).to_json()
                copies[family].append(run)
                print("watermark", family, run, file=sys.stderr)

    families = {}
    for family, runs in copies.items():
        by_budget = {}
        for budget in BUDGETS:
            at = [r for r in runs if r["budget"] == budget]
            asked = sum(r.get("queries", 0) for r in at)
            by_budget[str(budget)] = {
                "kept_share": round(sum(r.get("matches", 0) for r in at) / asked, 4)
                if asked else None,
                "worst_p": max(r.get("p_value", 1.0) for r in at),
                "all_p_le_1e-6": all(r.get("p_value", 1.0) <= TARGET_P for r in at),
            }  # fmt: skip
        reached = [b for b in BUDGETS if by_budget[str(b)]["all_p_le_1e-6"]]
        families[family] = {"runs": runs, "budgets": by_budget,
                            "smallest_budget_all_seeds_p_le_1e-6": min(reached, default=None),
                            "met": bool(reached)}  # fmt: skip
    changed = sum(len(s["marks"].rows) for s in streams)
    answered = sum(len(s["rows"]) for s in streams)
    model_test = oracle(test_rows)
    test_marks = streams[0]["marker"].mark(test_rows, model_test)
    served_test, _ = served_answers(model_test, np.eye(classes)[model_test], test_marks)
    truth_test = truth[split.test]
    return {
        "rate": RATE, "budgets": list(BUDGETS), "max_verification_queries": MAX_QUERIES,
        "attacker": "test-split rows rolled by <= 1 pixel, Gaussian noise sigma 1 (0-16 range)",
        "null": {
            "models": len(independents), "agreements": agreements, "trials_per_model":
            len(all_records), "upper_bound_99": round(bound, 6), "p0": round(p0, 6),
            "runs": null_runs, "goal": "every p > 0.01",
            "met": all(r["p_value"] > 0.01 for r in null_runs),
        },
        "families": families,
        "queries_for_p_le_1e-6_if_every_watermark_is_kept": queries_for(TARGET_P, 1.0, p0, RATE),
        "goal": "p <= 1e-6 for every family with <= 100 verification queries",
        "met": all(f["met"] for f in families.values()),
        "accuracy_cost": {
            "answers": answered, "changed": changed,
            "changed_share": round(changed / answered, 5),
            "test_accuracy_model": round(float((model_test == truth_test).mean()), 4),
            "test_accuracy_served": round(float((served_test == truth_test).mean()), 4),
            "goal": "<= 1% of answers", "met": changed / answered <= 0.01,
        },
    }  # fmt: skip
