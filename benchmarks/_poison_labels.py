"""bench_poisoning's label part: the ``label-issue`` screen against plain cleanlab.

Not a benchmark itself (the leading underscore keeps ``make bench`` from running it).

Per dataset and attack (``aegis.attack.poison``; ``Poisoned.rows`` is the truth) and seed:

- datasets: ``digits`` as the pipeline ingests it (``_digits.digits_frame``, 1797 rows)
  and ``breast_cancer`` (569 rows, 30 features, columns snake_cased, target -> label);
- attacks: random flips of 5 % (``flip``), half of one class relabelled as another
  (``pair``: digits 1 -> 7, breast cancer 0 -> 1), boundary flips of 5 % (``boundary``,
  the rows nearest a logistic regression's boundary given their runner-up class), and
  the clean table;
- methods: ``label-issue`` (``label_issue_screen`` with its defaults, the seed deciding
  its folds) and ``cleanlab`` (the baseline: ``cleanlab.filter.find_label_issues`` with
  its defaults on 5-fold out-of-fold probabilities of an RBF SVC alone, ``probability=True``
  (libsvm's Platt scaling; ``CalibratedClassifierCV(SVC(), ensemble=False)`` once scikit-learn
  drops it), same features as the screen: images in [0, 1], tables standardised);
- figures: precision, recall and F1 against the poisoned rows, the share of clean rows
  flagged, the wall seconds of the call (features to flags).

Precision is None when nothing is flagged or on the clean table, recall and F1 None on the
clean table; means
are over the seeds where the figure exists. The screen's settings were chosen on seeds
100-104; report other seeds (0-4).
"""

from __future__ import annotations

import re
import statistics
import time
import warnings
from typing import Any

import numpy as np

SEEDS_NOTE = "label-issue settings were chosen on seeds 100-104 only"
ATTACKS: dict[str, dict[str, dict[str, Any] | None]] = {
    "digits": {
        "flip_5pct": {"kind": "flip", "rate": 0.05},
        "pair_1to7_50pct": {"kind": "pair", "rate": 0.5, "source": 1, "target": 7},
        "boundary_5pct": {"kind": "boundary", "rate": 0.05},
        "clean": None,
    },
    "breast_cancer": {
        "flip_5pct": {"kind": "flip", "rate": 0.05},
        "pair_0to1_50pct": {"kind": "pair", "rate": 0.5, "source": 0, "target": 1},
        "boundary_5pct": {"kind": "boundary", "rate": 0.05},
        "clean": None,
    },
}
METHODS = ("label-issue", "cleanlab")


def breast_cancer_frame():
    """scikit-learn's breast cancer table as an import would write it (30 features + label)."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame = frame.rename(columns=lambda c: re.sub(r"[^0-9a-zA-Z]+", "_", c).strip("_").lower())
    frame = frame.rename(columns={"target": "label"})
    frame["label"] = frame["label"].astype("int64")
    return frame


def dataset(name: str):
    if name == "digits":
        from _digits import digits_frame

        return digits_frame()
    if name == "breast_cancer":
        return breast_cancer_frame()
    raise ValueError(f"unknown dataset {name!r}: one of {', '.join(ATTACKS)}")


def _cleanlab_baseline(frame, seed: int) -> np.ndarray:
    """Plain cleanlab: its default cut-off on an SVC's out-of-fold probabilities."""
    from cleanlab.filter import find_label_issues
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from aegis.screens.table import feature_columns, image_side

    columns = feature_columns(frame)
    x = frame[columns].to_numpy(dtype=np.float64)
    if image_side(columns) is not None:
        x = (x - x.min()) / (x.max() - x.min())
    else:
        x = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    y = frame["label"].to_numpy()
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # probability=True's deprecation, once per fit
        warnings.simplefilter("ignore", FutureWarning)
        probs = cross_val_predict(_svc(seed), x, y, cv=folds, method="predict_proba")
    return np.flatnonzero(find_label_issues(y, probs, n_jobs=1))  # one process, same flags


def _svc(seed: int):
    """An SVC with libsvm's own probabilities (deprecated in scikit-learn 1.9, gone in 1.11)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    try:
        return SVC(probability=True, random_state=seed)
    except TypeError:  # scikit-learn >= 1.11: the replacement its deprecation names
        return CalibratedClassifierCV(SVC(), ensemble=False)


def _flag(method: str, frame, seed: int) -> np.ndarray:
    if method == "label-issue":
        from aegis.screens.label_issues import label_issue_screen

        return label_issue_screen(frame, seed=seed).flagged
    return _cleanlab_baseline(frame, seed)


def _figures(flagged: np.ndarray, truth: list[int], rows: int) -> dict[str, Any]:
    flagged_set, truth_set = set(flagged.tolist()), set(truth)
    hits = len(flagged_set & truth_set)
    precision = hits / len(flagged_set) if flagged_set and truth_set else None
    recall = hits / len(truth_set) if truth_set else None
    f1 = None
    if recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    return {
        "flagged": len(flagged_set),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "clean_flagged_share": len(flagged_set - truth_set) / (rows - len(truth_set)),
    }


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.fmean(present), 4) if present else None


def run(*, seeds: list[int], datasets: list[str]) -> dict[str, Any]:
    """Per dataset, attack and method: per-seed figures and their means (JSON-able)."""
    import inspect

    from aegis.attack.poison import poison
    from aegis.screens.label_issues import label_issue_screen

    defaults = {
        name: p.default
        for name, p in inspect.signature(label_issue_screen).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    out: dict[str, Any] = {
        "seeds": list(seeds),
        "note": SEEDS_NOTE,
        "methods": {
            "label-issue": {"settings": defaults},
            "cleanlab": {"model": type(_svc(0)).__name__, "folds": 5, "cut_off": "defaults"},
        },
        "datasets": {},
    }
    for name in datasets:
        frame = dataset(name)
        cases: dict[str, Any] = {}
        for case, attack in ATTACKS[name].items():
            entry: dict[str, Any] = {"attack": attack}
            runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
            for seed in seeds:
                poisoned = poison(frame, seed=seed, **attack) if attack else None
                table = poisoned.frame if poisoned else frame
                truth = poisoned.rows if poisoned else []
                for method in METHODS:
                    started = time.perf_counter()
                    flagged = _flag(method, table, seed)
                    seconds = time.perf_counter() - started
                    figures = _figures(flagged, truth, len(table))
                    runs[method].append({"seed": seed, **figures, "seconds": round(seconds, 3)})
            for method, per_seed in runs.items():
                keys = ("precision", "recall", "f1", "clean_flagged_share", "seconds")
                entry[method] = {
                    "per_seed": per_seed,
                    "mean": {k: _mean([s[k] for s in per_seed]) for k in keys},
                }
            cases[case] = entry
        out["datasets"][name] = {"rows": len(frame), "attacks": cases}
    return out
