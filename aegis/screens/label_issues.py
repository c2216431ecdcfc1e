"""``label-issue``: rows whose label the rest of the table contradicts (label-flip poisoning).

Method: every row gets three out-of-fold views of its class, averaged: a logistic
regression and an RBF SVC fitted in ``folds`` stratified folds (each row judged by models
that never saw it; the SVC's one-vs-one decision values summed per class, then a softmax
with one temperature fitted on them: far cheaper than ``probability=True``'s nested Platt
fits), and the labels of its ``knn`` nearest other rows (smoothed vote shares). Images
(``pixel_<r>_<c>``) are scaled to [0, 1], other tables standardised.

Score: each class's probabilities are divided by its confident threshold (cleanlab's
``get_confident_thresholds``: the mean probability given to the class over the rows
labelled with it; never below chance, 1/classes); a row scores the best other class's
normalised probability minus its own label's. The normalisation exposes pair flips: when
half of class 1 is relabelled 7, the 1-region is half 1, half 7, class 1's threshold
drops (about 0.35) while class 7's stays high, so the 7s there score high, the 1s do not.

Cut-off: a fixed margin, after refits. Rows scoring above ``drop_threshold`` (0.6) are
left out of the next fit's training for good (still scored); the models are refitted at
most ``refits`` (5) times, until no new row passes 0.6; the rows whose last score exceeds
``threshold`` (0.75) are flagged. A row flipped at random is claimed by its true class by
a margin near 1, an ambiguous clean row rarely passes 0.75. Refits are for structured
flips: without the most suspicious rows the 1-region is mostly 1 again and its other 7s
stand out; a cleaner fit is more confident everywhere, hence a final cut above the drop
cut. cleanlab's own cut-off (``find_label_issues``, its estimate of how many labels are
wrong) missed a tenth or more of random flips; it is only reported
(``details["cleanlab_issues"]``). Settings chosen on benchmark seeds 100-104 only.

Not screened (nothing flagged, reason in ``details["skipped"]``): fewer than ``min_rows``
rows or one class, and labels the features hardly predict (the first fit's gain over the
class shares below ``min_gain``: random labels, where every row would look wrong). A
class of one row is left out; a class smaller than ``folds`` lowers the folds.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from aegis.screens.result import ScreenResult, per_class_counts
from aegis.screens.table import LABEL, feature_columns, image_side

NAME = "label-issue"
MIN_ROWS = 20
# added to every class's neighbour count: ten agreeing neighbours are strong evidence, not proof
_VOTE_PRIOR = 0.5
# log-temperatures tried for the SVC softmax: steps of about 10 %, a range no fit leaves
_LOG_TEMPERATURES = np.linspace(-4.0, 4.0, 81)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _soft_votes(decision: np.ndarray, n_classes: int) -> np.ndarray:
    """Per class, the sum of its one-vs-one decision values (positive: for the class)."""
    if n_classes == 2:  # binary SVC: one value, positive for the second class
        return np.stack([-decision, decision], axis=1)
    votes = np.zeros((len(decision), n_classes))
    pair = 0
    for i in range(n_classes):
        for j in range(i + 1, n_classes):
            votes[:, i] += decision[:, pair]
            votes[:, j] -= decision[:, pair]
            pair += 1
    return votes


def _fit_fold(x_train, y_train, x_test, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Logistic-regression probabilities and SVC soft votes for the held-out rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    probs = np.zeros((len(x_test), n_classes))
    votes = np.full((len(x_test), n_classes), -np.inf)  # a class absent from training: no votes
    present = np.unique(y_train)
    if len(present) < 2:  # nothing to separate: the one class seen takes it all
        probs[:, present] = 1.0
        votes[:, present] = 0.0
        return probs, votes
    lr = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    probs[:, lr.classes_] = lr.predict_proba(x_test)
    svc = SVC(decision_function_shape="ovo").fit(x_train, y_train)
    votes[:, svc.classes_] = _soft_votes(svc.decision_function(x_test), len(svc.classes_))
    return probs, votes


def _temperature(votes: np.ndarray, y: np.ndarray) -> float:
    """The softmax temperature with the least log loss on the given labels."""
    rows = np.arange(len(y))
    losses = [
        -np.log(_softmax(votes * math.exp(t))[rows, y] + 1e-12).mean() for t in _LOG_TEMPERATURES
    ]
    return math.exp(float(_LOG_TEMPERATURES[int(np.argmin(losses))]))


def _neighbour_votes(x, y, keep, knn: int, n_classes: int) -> np.ndarray:
    """Smoothed label shares of each row's ``knn`` nearest kept rows (never the row itself)."""
    from sklearn.neighbors import NearestNeighbors

    reference = np.flatnonzero(keep)
    k = min(knn, len(reference) - 1)
    if k < 1:
        return np.full((len(x), n_classes), 1.0 / n_classes)
    index = NearestNeighbors(n_neighbors=k + 1).fit(x[reference])
    near = reference[index.kneighbors(x, return_distance=False)]
    # the row's own entry goes last (a left-out row is not in the reference: k+1 others)
    own = near == np.arange(len(x))[:, None]
    near = np.take_along_axis(near, np.argsort(own, axis=1, kind="stable"), axis=1)[:, :k]
    counts = np.zeros((len(x), n_classes))
    np.add.at(counts, (np.arange(len(x))[:, None], y[near]), 1.0)
    return (counts + _VOTE_PRIOR) / (k + n_classes * _VOTE_PRIOR)


def _ensemble(x, y, keep, splits, knn: int, n_classes: int) -> tuple[np.ndarray, float]:
    """Mean of the three out-of-fold views, models trained on the kept rows only."""
    lr = np.zeros((len(y), n_classes))
    votes = np.zeros((len(y), n_classes))
    for train, test in splits:
        train = train[keep[train]]
        lr[test], votes[test] = _fit_fold(x[train], y[train], x[test], n_classes)
    temperature = _temperature(votes[keep], y[keep])  # fitted on the labels not in doubt
    svc = _softmax(votes * temperature)
    return (lr + svc + _neighbour_votes(x, y, keep, knn, n_classes)) / 3.0, temperature


def _margins(probs, y, keep) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score (best other class minus own, normalised per class), that class, the thresholds."""
    from cleanlab.count import get_confident_thresholds

    with warnings.catch_warnings():  # a class with every row left out: cleanlab warns, copes
        warnings.simplefilter("ignore")
        thresholds = get_confident_thresholds(y[keep], probs[keep])
    # never below chance: a class whose own rows get less (a rare class of unlearnable rows)
    # would otherwise claim every row that gives it a sliver of probability
    thresholds = np.maximum(thresholds, 1.0 / probs.shape[1])
    normalised = probs / thresholds
    rows = np.arange(len(y))
    own = normalised[rows, y].copy()
    normalised[rows, y] = -np.inf
    return normalised.max(axis=1) - own, normalised.argmax(axis=1), thresholds


def _gain(probs: np.ndarray, y: np.ndarray) -> float:
    """1 - log loss / log loss of the class shares alone: how much the features tell."""
    shares = np.bincount(y, minlength=probs.shape[1]) / len(y)  # two classes or more: loss > 0
    return float(1.0 - np.log(probs[np.arange(len(y)), y]).mean() / np.log(shares[y]).mean())


def _features(frame, columns: list[str]) -> tuple[np.ndarray, str, int]:
    try:
        x = frame[columns].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{NAME}: the feature columns must be numeric ({exc})") from None
    bad = ~np.isfinite(x)
    if bad.any():  # validation rejects these; a stray one must not stop the screen
        masked = np.where(bad, np.nan, x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an all-missing column: its median is nan, use 0
            fill = np.nan_to_num(np.nanmedian(masked, axis=0))
        x = np.where(bad, fill, x)
    if image_side(columns) is not None:
        low, high = x.min(), x.max()
        scaled = (x - low) / (high - low) if high > low else np.zeros_like(x)
        return scaled, "image, scaled to [0, 1]", int(bad.sum())
    spread = x.std(axis=0)
    spread[spread == 0] = 1.0  # a constant column carries no information, and no division by 0
    return (x - x.mean(axis=0)) / spread, "standardised", int(bad.sum())


def _check(**settings: Any) -> dict[str, Any]:
    """The settings as plain ints and floats (JSON-able), or ValueError naming the bad one."""
    for name, value in settings.items():
        low = {"seed": 0, "folds": 2, "knn": 1, "refits": 0, "min_rows": 2}.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise ValueError(f"{NAME}: {name}={value!r} must be a number")
        if low is not None and (not isinstance(value, int | np.integer) or value < low):
            raise ValueError(f"{NAME}: {name}={value!r} must be an integer >= {low}")
        bound = "< 1" if name == "min_gain" else "> 0"  # a gain of 1 is a perfect fit
        if low is None and not (
            math.isfinite(value) and (value < 1 if bound == "< 1" else value > 0)
        ):
            raise ValueError(f"{NAME}: {name}={value!r} must be a finite number {bound}")
        settings[name] = float(value) if low is None else int(value)
    return settings


def label_issue_screen(
    frame,
    *,
    seed: int = 0,
    folds: int = 5,
    knn: int = 10,
    threshold: float = 0.75,
    drop_threshold: float = 0.6,
    refits: int = 5,
    min_rows: int = MIN_ROWS,
    min_gain: float = 0.1,
) -> ScreenResult:
    """Flags rows whose label the table's other rows contradict (see the module docstring).

    Args:
        frame: Feature columns and an integer ``label`` column (the rows that passed validation).
        seed: Decides the folds; same table and seed, same result.
        folds: Stratified folds of the out-of-fold predictions (fewer when a class is smaller).
        knn: Neighbours whose labels vote.
        threshold: A row is flagged when its last score exceeds this.
        drop_threshold: Rows scoring above this are left out of the next fit's training.
        refits: Most fits after the first, each without the rows that scored above
            ``drop_threshold`` in any fit before.
        min_rows: Fewer rows than this are not screened (nothing flagged, reason recorded).
        min_gain: Nothing is flagged (reason recorded) when the first fit's out-of-fold
            probabilities gain less than this over the class shares alone (1 - log loss
            ratio): random labels gain about 0, the benchmark tables 0.2-0.9.

    Returns:
        The screen's result: ``scores`` are the last fit's normalised margins (rows not
        screened get the lowest screened score), ``per_class`` adds each class's confident
        threshold and the classes its flagged rows look like, ``details`` the settings,
        folds used, each fit's counts and cleanlab's own issue count.

    Raises:
        ValueError: Bad settings, no ``label`` or no feature column, non-numeric features.
    """
    settings = _check(seed=seed, folds=folds, knn=knn, threshold=threshold,
                      drop_threshold=drop_threshold, refits=refits, min_rows=min_rows,
                      min_gain=min_gain)  # fmt: skip
    columns = feature_columns(frame)
    if LABEL not in frame.columns or not columns:
        raise ValueError(f"{NAME}: the table needs feature columns and a '{LABEL}' column")
    labels = frame[LABEL].to_numpy()
    classes, y_all = np.unique(labels, return_inverse=True)
    sizes = np.bincount(y_all, minlength=len(classes))
    rows = np.flatnonzero(sizes[y_all] >= 2)  # a class of one row cannot be held out and learnt
    details: dict[str, Any] = {**settings, "rows": len(frame), "screened_rows": len(rows)}
    per_class = per_class_counts(labels, np.array([], dtype=np.int64))
    for c in classes[sizes < 2]:
        per_class[int(c)]["skipped"] = "a single row: it cannot be held out and learnt at once"
    scores = np.zeros(len(frame))
    n_classes = len(np.unique(y_all[rows]))
    if len(rows) < min_rows or n_classes < 2:
        details["skipped"] = f"{len(rows)} row(s) in {n_classes} class(es): too few to learn from"
        return ScreenResult(NAME, rows[:0], scores, settings["threshold"], per_class, details)
    from cleanlab.filter import find_label_issues
    from sklearn.model_selection import StratifiedKFold

    x, details["scaling"], details["non_finite_filled"] = _features(frame.iloc[rows], columns)
    kept, y = np.unique(y_all[rows], return_inverse=True)
    details["folds_used"] = int(min(folds, np.bincount(y).min()))
    folding = StratifiedKFold(details["folds_used"], shuffle=True, random_state=seed)
    probs, margin, suggested, thresholds = _fits(x, y, list(folding.split(x, y)), details)
    hits = margin > threshold if "skipped" not in details else np.zeros(len(y), dtype=bool)
    flagged = rows[hits]
    scores[:] = margin.min()
    scores[rows] = margin
    for index, c in enumerate(classes[kept]):
        looks_like = np.bincount(suggested[hits & (y == index)], minlength=n_classes)
        per_class[int(c)].update({
            "flagged": int(hits[y == index].sum()),
            "confident_threshold": round(float(thresholds[index]), 4),
            # pair flips show here: most of a class's flagged rows look like one other class
            "flagged_look_like": {int(classes[kept[j]]): int(n)
                                  for j, n in enumerate(looks_like) if n},
        })  # fmt: skip
    details["flagged"] = len(flagged)
    details["flagged_share"] = round(len(flagged) / len(frame), 6)
    # cleanlab's own cut-off on the last fit, for comparison (it decides nothing)
    details["cleanlab_issues"] = int(find_label_issues(y, probs, n_jobs=1).sum())
    return ScreenResult(NAME, flagged, scores, settings["threshold"], per_class, details)


def _fits(x, y, splits, details: dict[str, Any]):
    """The first fit and its refits; the last fit's probabilities, margins, look-alikes, thresholds.

    Each fit's counts go to ``details["fits"]``; ``details["skipped"]`` when the first
    fit shows the labels are not learnable.
    """
    n_classes, folds = int(y.max()) + 1, details["folds_used"]
    drop = np.zeros(len(y), dtype=bool)
    details["fits"] = []
    for fit in range(details["refits"] + 1):
        probs, temperature = _ensemble(x, y, ~drop, splits, details["knn"], n_classes)
        margin, suggested, thresholds = _margins(probs, y, ~drop)
        details["fits"].append({
            "left_out": int(drop.sum()),
            "above_threshold": int((margin > details["threshold"]).sum()),
            "accuracy": round(float((probs.argmax(axis=1) == y).mean()), 4),
            "gain": round(_gain(probs, y), 4),
            "svc_temperature": round(temperature, 4),
        })  # fmt: skip
        gain = details["fits"][0]["gain"]
        if gain < details["min_gain"]:  # labels the features hardly predict: no verdict
            details["skipped"] = (f"the features hardly predict the labels (gain {gain}): "
                                  "flipped labels cannot be told from hard rows")  # fmt: skip
            break
        # once left out, a row stays out: the fits converge instead of trading borderline rows
        wanted = drop | (margin > details["drop_threshold"])
        for c in range(n_classes):  # never take a class out of training entirely
            if ((y == c) & ~wanted).sum() < folds:
                wanted[y == c] = drop[y == c]
        if fit == details["refits"] or np.array_equal(wanted, drop):
            break  # the next fit would train on the same rows: nothing would change
        drop = wanted
    return probs, margin, suggested, thresholds
