"""The production monitor's statistics: black-box shift tests with calibrated thresholds.

A window is ``n`` consecutive answered rows of one model version. Three signals, each
a number that grows with the shift (Rabanser et al., "Failing Loudly", 2019: tests on
the model's outputs find most shifts a model cares about):

- ``softmax_ks``: the largest two-sample Kolmogorov-Smirnov distance between the
  window's and the reference's values of each softmax column and of the top
  probability (confidence). Taking the maximum over columns is the multiple-testing
  correction: its null distribution is what is calibrated, not one test's alpha.
- ``label_chi2``: Pearson's chi-squared test of homogeneity of the window's predicted
  labels and the reference's (:func:`chi2_two_sample`).
- ``ood_count``: how many rows of the window have a Mahalanobis score on penultimate
  features (the extraction reference's class means and tied covariance) above every
  reference row's. Its threshold is beta-binomial (the rate above a cut estimated on
  the reference is uncertain: Beta(1, m) above the maximum of m rows), not
  bootstrapped: no resample of the reference holds a row above its own maximum.
- ``input_psi``: the largest PSI over the logged input features (every feature, or each
  row's mean, minimum and maximum: ``serve.log_inputs``) between the window and the
  reference (:mod:`aegis.evaluate.input_shift`).
- ``adversarial_count``: how many rows of the window the gateway's squeezing detector
  flagged. Its threshold is beta-binomial on the detector's own false-positive count on
  the test split (Beta(flagged + 1, clean + 1)): the rate a clean window flags at.
- ``extraction_count``: how many rows of the window came from keys the gateway's
  extraction monitor had flagged when it answered them. Its threshold is 0 (one such row
  is a breach) and it takes no share of ``alpha``: its false alarms are that monitor's,
  a clean key flagged, which the extraction reference calibrates per key.
- ``latency_shift``: ``-log10`` of a one-sided Mann-Whitney test of the window's request
  latencies against the same version's preceding requests (inference-time anomalies:
  sponge inputs, a degraded host). Latency belongs to the serving machine, not to the
  release, so its reference is the version's own recent history, and its threshold
  ``-log10(alpha_s)`` rests on the rank test's exact null under a steady load.
- ``feedback_accuracy``: on the window's rows that came back with a true label
  (feedback), how surprising their errors are: ``-log10`` of the beta-binomial upper
  tail of that many errors in that many labelled rows, given the reference's errors
  (Beta(errors + 1, correct + 1): the reference's error rate is itself uncertain). Its
  threshold is ``-log10(alpha_s)``; a window without feedback scores 0. A discrete
  tail is conservative: the false-alarm rate is at most ``alpha_s``.

Nominal alphas are wrong on small windows (the KS test at 0.05 alarms 6 % of the time
at n = 50 on softmax outputs, which are far from continuous), so the thresholds of
``softmax_ks``, ``label_chi2`` and ``input_psi`` are the ``1 - alpha_s`` quantile of the
signal's permutation null on held-out rows the model never trained on or was selected
on (:func:`calibrate_monitor`: the evaluate stage gives it the test split; the benchmark
gives it one half and measures on the other). Each signal gets an equal share of
``alpha`` (a window alarms when any signal is above its threshold), and ``alpha`` itself
comes from the false-alarm budget (:func:`window_alpha`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from aegis.evaluate.input_shift import InputBins

SIGNALS = ("softmax_ks", "label_chi2", "ood_count", "input_psi", "adversarial_count",
           "extraction_count", "latency_shift", "feedback_accuracy")  # fmt: skip
BOOTS = 4000  # replicates per threshold (alpha / 7 of 0.01 leaves ~6 above it)
LATENCY_HISTORY = 1000  # preceding requests a window's latencies are ranked against
LATENCY_MIN = (30, 5)  # fewer requests before or in the window: no latency signal


def window_alpha(*, false_alarms_per_day: float, windows_per_day: float, confirm: int) -> float:
    """The per-window false-alarm rate a daily budget allows when ``confirm`` windows in a
    row must breach (independent windows: ``alpha ** confirm`` per window)."""
    if false_alarms_per_day <= 0 or windows_per_day <= 0 or confirm < 1:
        raise ValueError("the false-alarm budget, the windows per day and confirm must be > 0")
    return min((false_alarms_per_day / windows_per_day) ** (1.0 / confirm), 0.5)


@dataclass(frozen=True)
class MonitorReference:
    """What windows are compared against (``metrics.json["monitor"]``)."""

    window: int  # rows per window the thresholds hold for
    alpha: float  # per-window false-alarm rate (all signals together)
    columns: np.ndarray  # (m, classes + 1) reference output_columns, each sorted
    label_share: np.ndarray  # (classes,) smoothed share of each predicted label
    ood_cut: float | None  # a row's OOD score above it counts; None: no OOD signal
    thresholds: dict[str, float]  # signal -> alarm when above
    feedback: tuple[int, int] | None = None  # reference (errors, rows); None: no feedback signal
    flags: tuple[int, int] | None = None  # the detector's (flagged, rows) on clean held-out rows
    inputs: InputBins | None = None  # the logged input features' bins; None: no input signal
    label_counts: np.ndarray | None = None  # (classes,) reference rows per label; None: an
    # older reference, whose label_chi2 is one-sample (against label_share)

    @property
    def classes(self) -> int:
        return len(self.label_share)

    def to_json(self) -> dict[str, Any]:
        return {
            "window": self.window, "alpha": self.alpha,
            "columns": np.round(self.columns, 4).T.tolist(),
            "label_share": np.round(self.label_share, 6).tolist(),
            "ood_cut": self.ood_cut, "thresholds": dict(self.thresholds),
            **({} if self.feedback is None else
               {"feedback": {"errors": self.feedback[0], "rows": self.feedback[1]}}),
            **({} if self.flags is None else
               {"flags": {"flagged": self.flags[0], "rows": self.flags[1]}}),
            **({} if self.inputs is None else {"inputs": self.inputs.to_json()}),
            **({} if self.label_counts is None else
               {"label_counts": self.label_counts.astype(np.int64).tolist()}),
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MonitorReference:
        """Raises ValueError on anything but a well-formed reference."""
        try:
            columns = np.sort(np.asarray(data["columns"], dtype=np.float64).T, axis=0)
            share = np.asarray(data["label_share"], dtype=np.float64)
            window, alpha = data["window"], float(data["alpha"])
            thresholds = {str(k): float(v) for k, v in dict(data["thresholds"]).items()}
            cut = data.get("ood_cut")
            cut = None if cut is None else float(cut)
            fb = data.get("feedback")
            feedback = None if fb is None else (fb["errors"], fb["rows"])
            fl = data.get("flags")
            flags = None if fl is None else (fl["flagged"], fl["rows"])
            bins = data.get("inputs")
            inputs = None if bins is None else InputBins.from_json(bins)
            counts = data.get("label_counts")
            label_counts = None if counts is None else np.asarray(counts, dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed monitor reference ({exc})") from None
        if not isinstance(window, int) or isinstance(window, bool) or window < 5:
            raise ValueError("malformed monitor reference (window)")
        if columns.ndim != 2 or share.ndim != 1 or columns.shape[1] != len(share) + 1:
            raise ValueError("malformed monitor reference (shapes)")
        values = [*thresholds.values(), alpha, *([] if cut is None else [cut])]
        finite = np.isfinite(columns).all() and np.isfinite(share).all()
        if not finite or not all(math.isfinite(v) for v in values) or not 0 < alpha < 1:
            raise ValueError("malformed monitor reference (values)")
        if set(thresholds) - set(SIGNALS) or (share <= 0).any():
            raise ValueError("malformed monitor reference (signals)")
        if label_counts is not None and (label_counts.shape != share.shape or
                                         (label_counts < 0).any()):  # fmt: skip
            raise ValueError("malformed monitor reference (label_counts)")
        for name, pair in (("feedback", feedback), ("flags", flags)):
            if pair is not None and not _counts(pair):
                raise ValueError(f"malformed monitor reference ({name})")
        return cls(window, alpha, columns, share, cut, thresholds, feedback, flags, inputs,
                   label_counts)  # fmt: skip


def _counts(pair: tuple) -> bool:
    """``(k, n)``: integers with ``0 <= k <= n`` and ``n > 0``."""
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
    return ints and 0 <= pair[0] <= pair[1] and pair[1] > 0


def output_columns(probs: np.ndarray) -> np.ndarray:
    """``(..., classes + 1)``: each class's probability and the top one (confidence), as
    log-odds clipped to +-30 and rounded to 4 decimals.

    KS is unchanged by a monotone map, but resolution is not: softmax outputs crowd at 0
    and 1 (1e-9 and 0 are one value after rounding for JSON, not after a softmax), so
    the reference and every window are put on the same rounded log-odds grid.
    """
    columns = np.concatenate([probs, probs.max(axis=-1, keepdims=True)], axis=-1)
    p = np.clip(columns, 1e-13, 1 - 1e-13)
    return np.round(np.clip(np.log(p) - np.log1p(-p), -30.0, 30.0), 4)


def ks_max(ref: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """The largest two-sample KS distance over columns, per window.

    Args:
        ref: ``(m, k)`` reference values, or ``(w, m, k)``: one reference per window
            (the calibration's resampled references).
        windows: ``(w, n, k)`` windows' values.
    """
    w, n, k = windows.shape
    refs = np.broadcast_to(ref, (w, *ref.shape[-2:]))
    m = refs.shape[1]
    out = np.zeros(w)
    for j in range(k):
        values = np.concatenate([refs[:, :, j], windows[:, :, j]], axis=1)
        order = np.argsort(values, axis=1, kind="stable")
        ranked = np.take_along_axis(values, order, axis=1)
        from_window = order >= m
        gap = np.abs(np.cumsum(~from_window, axis=1) / m - np.cumsum(from_window, axis=1) / n)
        # only where the value changes: tied values step together
        last = np.ones_like(from_window)
        last[:, :-1] = ranked[:, 1:] != ranked[:, :-1]
        out = np.maximum(out, np.where(last, gap, 0.0).max(axis=1))
    return out


def label_counts(labels: np.ndarray, classes: int) -> np.ndarray:
    """Rows per label along the last axis: ``(..., classes)``."""
    return np.stack([(labels == c).sum(axis=-1) for c in range(classes)], axis=-1)


def label_share(labels: np.ndarray, classes: int) -> np.ndarray:
    """Smoothed share of each label along the last axis (no class is impossible)."""
    counts = label_counts(labels, classes) + 0.5
    return counts / counts.sum(axis=-1, keepdims=True)


def chi2(share: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Pearson's chi-squared of each window's labels, ``(w, n)``, against ``share``
    (``(classes,)``, or ``(w, classes)``: one per window)."""
    n = labels.shape[1]
    counts = label_counts(labels, share.shape[-1])
    expected = n * np.broadcast_to(share, counts.shape)
    return ((counts - expected) ** 2 / expected).sum(axis=1)


def chi2_two_sample(ref: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Pearson's chi-squared test of homogeneity of each window's labels ``(w, n)`` and
    the reference's label counts ``ref`` (``(classes,)``, or ``(w, classes)``: one per
    window); labels neither sample has are left out.

    Two-sample, unlike :func:`chi2`: its null is chi-squared with ``classes - 1``
    degrees of freedom whatever the two sizes, so a permutation null of a window against
    the other rows holds for the whole reference. The one-sample statistic against the
    rest's shares had a heavy tail there (a window rich in a label leaves the rest poor
    in it: numerator and denominator move together), so its threshold was 44 where the
    chi-squared quantile is 25, and a window of half the classes went unseen 3 % of the time.
    """
    win = label_counts(labels, ref.shape[-1]).astype(np.float64)
    ref = np.broadcast_to(np.asarray(ref, dtype=np.float64), win.shape)
    pooled = ref + win
    total = pooled.sum(axis=1, keepdims=True)
    out = np.zeros(len(win))
    for sample in (ref, win):
        expected = sample.sum(axis=1, keepdims=True) * pooled / total
        with np.errstate(divide="ignore", invalid="ignore"):
            out += np.where(pooled > 0, (sample - expected) ** 2 / expected, 0.0).sum(axis=1)
    return out


def feedback_surprise(
    errors: int, rows: int, wrong: np.ndarray, labelled: np.ndarray
) -> np.ndarray:
    """``-log10 P(X >= wrong)`` per window, ``X ~ BetaBinom(labelled, errors + 1, rows -
    errors + 1)``: how unlikely that many errors among the labelled rows are for a model
    as accurate as on the reference; 0 where a window has no labelled row."""
    from scipy import stats

    labelled = np.asarray(labelled, dtype=np.int64)
    tail = stats.betabinom(np.maximum(labelled, 1), errors + 1, rows - errors + 1).sf(
        np.asarray(wrong) - 1
    )
    value = -np.log10(np.clip(tail, 1e-300, 1.0))
    return np.where(labelled > 0, value, 0.0)


def latency_surprise(before: np.ndarray, during: np.ndarray) -> float:
    """``-log10`` of the one-sided Mann-Whitney p-value that the requests ``during`` a
    window took longer than those ``before`` it (one latency per request); 0 with fewer
    than :data:`LATENCY_MIN` requests on either side."""
    from scipy import stats

    if len(before) < LATENCY_MIN[0] or len(during) < LATENCY_MIN[1]:
        return 0.0
    p = stats.mannwhitneyu(during, before, alternative="greater", method="asymptotic").pvalue
    return float(-math.log10(max(float(p), 1e-300)))


def signals(
    ref: MonitorReference,
    probs: np.ndarray,
    labels: np.ndarray,
    ood: np.ndarray | None,
    truth: np.ndarray | None = None,
    flagged: np.ndarray | None = None,
    *,
    inputs: np.ndarray | None = None,
    extracting: np.ndarray | None = None,
    latency: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every signal of each window: ``probs`` ``(w, n, classes)``, ``labels``, ``ood``
    scores, feedback ``truth`` (the true label, -1 where none came back), the detector's
    ``flagged`` rows ``(w, n)``, the logged ``inputs`` ``(w, n, features)``, whether each
    row's key was ``extracting`` (flagged by the extraction monitor) and each window's
    ``latency`` surprise ``(w,)`` (:func:`latency_surprise`); a signal whose data is
    absent is left out."""
    out = {
        "softmax_ks": ks_max(ref.columns, output_columns(probs)),
        "label_chi2": (chi2(ref.label_share, labels) if ref.label_counts is None
                       else chi2_two_sample(ref.label_counts, labels)),
    }  # fmt: skip
    if ood is not None and ref.ood_cut is not None:
        out["ood_count"] = (ood > ref.ood_cut).sum(axis=1).astype(np.float64)
    if inputs is not None and ref.inputs is not None:
        out["input_psi"] = ref.inputs.psi_max(ref.inputs.counts_of(ref.inputs.index(inputs)))
    if flagged is not None and ref.flags is not None:
        out["adversarial_count"] = np.asarray(flagged, dtype=bool).sum(axis=1).astype(np.float64)
    if extracting is not None and "extraction_count" in ref.thresholds:
        out["extraction_count"] = np.asarray(extracting, dtype=bool).sum(axis=1).astype(float)
    if latency is not None and "latency_shift" in ref.thresholds:
        out["latency_shift"] = np.asarray(latency, dtype=np.float64)
    if truth is not None and ref.feedback is not None and (truth >= 0).any():
        known = truth >= 0
        wrong = (known & (truth != labels)).sum(axis=1)
        out["feedback_accuracy"] = feedback_surprise(*ref.feedback, wrong, known.sum(axis=1))
    return out


def breaches(ref: MonitorReference, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per signal, which windows are above its threshold."""
    return {name: v > ref.thresholds[name] for name, v in values.items() if name in ref.thresholds}


def _permutation_windows(rng, m: int, window: int, boots: int, block: int = 500):
    """``(slice, wins, member)`` blocks: each replicate's window is ``window`` of the
    ``m`` rows drawn without replacement (``wins``, ``(size, window)``; ``member``,
    ``(size, m)``, marks them) and its reference the other ``m - window`` rows.

    Why a permutation and not a bootstrap of both: rows a bootstrap window shares with a
    bootstrap reference (about 60 % of them, drawn from the same rows) pull the two
    samples together, so its null was too narrow and the monitor alarmed 1.5 % of clean
    windows at alpha 0.01; fresh production rows are never reference rows.
    """
    for start in range(0, boots, block):
        size = min(block, boots - start)
        wins = np.argsort(rng.random((size, m)), axis=1)[:, :window]
        member = np.zeros((size, m), dtype=bool)
        np.put_along_axis(member, wins, True, axis=1)
        yield slice(start, start + size), wins, member


def _split_ks(columns: np.ndarray, member: np.ndarray, window: int) -> np.ndarray:
    """The largest KS distance over columns between each replicate's window (``member``)
    and the other rows: one sort per column, then counts along it (no sort per replicate)."""
    m = len(columns)
    out = np.zeros(len(member))
    seen = np.arange(1, m + 1)
    for j in range(columns.shape[1]):
        order = np.argsort(columns[:, j], kind="stable")
        ranked = columns[order, j]
        last = np.append(ranked[1:] != ranked[:-1], True)  # tied values step together
        in_window = np.cumsum(member[:, order], axis=1)
        gap = np.abs((seen - in_window) / (m - window) - in_window / window)
        out = np.maximum(out, gap[:, last].max(axis=1))
    return out


def calibrate_monitor(
    *,
    probs: np.ndarray,
    ood: np.ndarray | None = None,
    correct: np.ndarray | None = None,
    flags: tuple[int, int] | None = None,
    inputs: InputBins | None = None,
    features: np.ndarray | None = None,
    extraction: bool = False,
    window: int = 50,
    alpha: float = 0.01,
    boots: int = BOOTS,
    seed: int = 0,
) -> dict[str, Any]:
    """The reference and each signal's threshold (see the module docstring).

    The reference is ``probs`` (held-out rows: the test split, never the validation
    split, which chose the training epoch and so is answered more confidently than
    production is). The null is a permutation one: each replicate splits those rows into
    a window and a reference of the rest (:func:`_permutation_windows`). That reference
    is ``window`` rows short of the real one, which widens the null of a statistic
    measured against it: each replicate's KS and PSI are rescaled by the ratio of the
    two-sample variances, ``r = (1/m + 1/n) / (1/(m - n) + 1/n)`` (``sqrt(r)`` for KS, a
    distance; ``r`` for PSI, a square of one), so the threshold is the one for a
    reference of all ``m`` rows. ``label_chi2`` is a two-sample test whose null does not
    depend on the sizes: it is not rescaled.

    Args:
        probs: Held-out rows' softmax outputs.
        ood: Their OOD scores, or None (no ``ood_count`` signal).
        correct: Whether each was answered right, or None (no ``feedback_accuracy``).
        flags: The detector's ``(flagged, rows)`` on clean held-out rows, or None (no
            ``adversarial_count``).
        inputs: The logged input features' bins (fitted on ``features``), or None (no
            ``input_psi``).
        features: The held-out rows' logged input features, ``(m, f)``, with ``inputs``.
        extraction: Whether the gateway monitors extraction (an ``extraction_count``).
        window: Rows per window.
        alpha: The per-window false-alarm rate of all signals together.
        boots: Permutation replicates.
        seed: Fixes the permutations.

    Returns:
        ``metrics.json["monitor"]``: the reference and how it was calibrated.

    Raises:
        ValueError: Fewer than ``window + 20`` held-out rows.
    """
    m = len(probs)
    if m < window + 20:
        raise ValueError(f"too few held-out rows ({m}) to calibrate windows of {window} rows "
                         f"(at least {window + 20})")  # fmt: skip
    from scipy import stats

    classes = probs.shape[1]
    columns, labels = output_columns(probs), probs.argmax(axis=1)
    rng = np.random.default_rng(seed)
    r = (1 / m + 1 / window) / (1 / (m - window) + 1 / window)
    null: dict[str, np.ndarray] = {"softmax_ks": np.empty(boots), "label_chi2": np.empty(boots)}
    counts_all = label_counts(labels, classes)
    index = None
    if inputs is not None and features is not None:
        index, null["input_psi"] = inputs.index(features), np.empty(boots)
    for block, wins, member in _permutation_windows(rng, m, window, boots):
        null["softmax_ks"][block] = _split_ks(columns, member, window) * math.sqrt(r)
        # the reference's counts are the rows' counts less the window's; two-sample: no r
        rest = counts_all - label_counts(labels[wins], classes)
        null["label_chi2"][block] = chi2_two_sample(rest, labels[wins])
        if index is not None:
            counts, rest = inputs.split_counts(features, index, member, wins)
            null["input_psi"][block] = inputs.psi_max(counts, ref=rest) * r
    cut = None
    if ood is not None:
        # above every reference row: attacks' rows (inverted or triggered images) lie far
        # out, and the lower the clean rate, the fewer rows a window needs (q99 of 179
        # rows needed 9 of 100, the maximum 6). The share of the population above the
        # maximum of m rows is Beta(1, m) (mean 1 / (m + 1)), so a fresh window's count
        # is beta-binomial, not binomial at a point estimate.
        cut = float(ood.max())
        counts = stats.betabinom(window, 1, m)
        null["ood_count"] = counts.rvs(size=boots, random_state=seed).astype(np.float64)
    shared = len(null) + (correct is not None) + (flags is not None) + 1  # + latency_shift
    per_signal = alpha / shared
    thresholds = {
        name: float(np.quantile(values, 1 - per_signal, method="higher"))
        for name, values in null.items()
    }
    if cut is not None:  # exact, not sampled: the smallest k with P(X > k) <= per_signal
        thresholds["ood_count"] = float(counts.isf(per_signal))
    thresholds["latency_shift"] = float(-math.log10(per_signal))
    if extraction:
        thresholds["extraction_count"] = 0.0
    feedback = None
    if correct is not None:
        feedback = (int(len(correct) - np.sum(correct)), len(correct))
        thresholds["feedback_accuracy"] = float(-math.log10(per_signal))
    if flags is not None:  # exact: a clean window's flag count, the rate uncertain
        flagged, rows = int(flags[0]), int(flags[1])
        tail = stats.betabinom(window, flagged + 1, rows - flagged + 1)
        thresholds["adversarial_count"] = float(tail.isf(per_signal))
    ref = MonitorReference(window, alpha, np.sort(columns, axis=0),
                           label_share(labels, classes), cut, thresholds, feedback,
                           None if flags is None else (int(flags[0]), int(flags[1])),
                           inputs if index is not None else None, counts_all)  # fmt: skip
    any_breach = np.any(np.stack(list(breaches(ref, null).values())), axis=0)
    return {
        **ref.to_json(),
        "calibrated_on": {
            "rows": m, "boots": boots, "seed": seed, "alpha_per_signal": per_signal,
            "null": "permutation", "null_false_alarms": round(float(any_breach.mean()), 5),
        },
    }  # fmt: skip


def model_outputs(
    model, x, *, ood: Callable[[Any], np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Softmax outputs of ``model`` on ``x`` (a tensor) and, with ``ood``, their OOD scores."""
    import torch

    with torch.no_grad():
        probs = torch.cat([model(c).softmax(dim=1) for c in x.split(4096)]).double().numpy()
    return probs, None if ood is None else ood(x)
