"""The monitor's input signal: PSI per logged input feature, against the test split.

What the prediction log keeps of a request's rows is ``serve.log_inputs`` (the release's
signed params): ``full`` every feature, ``summary`` each row's mean, minimum and maximum,
``none`` nothing (then there is no input signal). :class:`InputBins` bins each such
feature on the test split by the data gate's rule (:mod:`aegis.data.drift`): one bin per
value when a feature takes few values (pixel intensities), quintiles otherwise, and a
bin for values never seen (beyond the reference's range, for quintiles). A window's
``input_psi`` is the largest PSI over features (:mod:`aegis.psi`), as ``softmax_ks``
takes the largest KS distance: the maximum's null is what
:func:`aegis.evaluate.monitoring.calibrate_monitor` calibrates, which is the
multiple-testing correction over features.

Outputs catch what the model notices; inputs catch what it does not yet: noise that
leaves most answers confident, or a tenth of the rows inverted (every background pixel
at the top of its range), shift pixel or row-mean histograms far more than softmax ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from aegis.psi import psi

MODES = ("full", "summary")
SUMMARY = ("input_mean", "input_min", "input_max")  # the log's columns in summary mode
DISTINCT = 20  # at most this many distinct values: a bin per value (the data gate's default)
QUANTILES = 5  # quintiles: a 50-row window expects 10 rows a bin (deciles doubled the noise)
PSEUDO = 0.5  # rows added to every bin before PSI (see InputBins.psi_max)


def logged_features(rows: np.ndarray, mode: str) -> np.ndarray | None:
    """``(n, f)``: what the prediction log keeps of ``rows`` (dataset units) under ``mode``."""
    if mode == "full":
        return np.asarray(rows, dtype=np.float64)
    if mode == "summary":
        rows = np.asarray(rows, dtype=np.float64)
        return np.stack([rows.mean(axis=1), rows.min(axis=1), rows.max(axis=1)], axis=1)
    return None


@dataclass(frozen=True)
class InputBins:
    """Each logged feature's bins and the reference's count in each (``(f, width)``)."""

    mode: str
    cuts: tuple[np.ndarray, ...]  # per feature: its distinct values, or quantile edges
    categorical: tuple[bool, ...]
    counts: np.ndarray  # (f, width) reference rows per bin; past a feature's own bins: 0

    @property
    def width(self) -> int:
        return max(len(c) for c in self.cuts) + 1

    @property
    def valid(self) -> np.ndarray:
        """``(f, width)``: which bins each feature has (``len(cut) + 1`` of them)."""
        return np.arange(self.width)[None, :] <= np.array([len(c) for c in self.cuts])[:, None]

    @classmethod
    def fit(cls, features: np.ndarray, mode: str) -> InputBins:
        """Bins of ``features`` ``(m, f)`` (the test split's, as logged under ``mode``)."""
        cuts, categorical = [], []
        for column in np.asarray(features, dtype=np.float64).T:
            values = np.unique(column)
            few = len(values) <= DISTINCT
            if not few:  # quintiles, and the extremes: beyond the reference's range is a bin
                # of its own on each side (count 0), not the outer quintile (a fifth of rows)
                values = np.unique(np.quantile(column, np.linspace(0, 1, QUANTILES + 1)))
                values = np.concatenate([[np.nextafter(values[0], -np.inf)], values])
            cuts.append(values)
            categorical.append(few)
        bins = cls(mode, tuple(cuts), tuple(categorical), np.zeros((len(cuts), 1)))
        counts = bins.counts_of(bins.index(features)[None])[0]
        return cls(mode, bins.cuts, bins.categorical, counts)

    def index(self, features: np.ndarray) -> np.ndarray:
        """Each value's bin, ``(..., f)`` like ``features``: for a feature with few
        values, the value's position (an unseen value: one past the last); otherwise its
        right-closed bin ``(-inf, e0], (e0, e1], ..., (e_last, inf)``."""
        features = np.asarray(features, dtype=np.float64)
        out = np.empty(features.shape, dtype=np.int32)
        for j, (cut, few) in enumerate(zip(self.cuts, self.categorical, strict=True)):
            column = features[..., j]
            pos = np.searchsorted(cut, column, side="left")
            if few:
                hit = (pos < len(cut)) & (cut[np.minimum(pos, len(cut) - 1)] == column)
                pos = np.where(hit, pos, len(cut))
            out[..., j] = pos
        return out

    def counts_of(self, index: np.ndarray) -> np.ndarray:
        """``(w, f, width)`` rows of each window per bin, from ``index`` ``(w, n, f)``."""
        w, _, f = index.shape
        width = self.width
        offsets = (np.arange(w)[:, None, None] * f + np.arange(f)[None, None, :]) * width
        counts = np.bincount((offsets + index).ravel(), minlength=w * f * width)
        return counts.reshape(w, f, width).astype(np.float64)

    def split_counts(
        self, features: np.ndarray, index: np.ndarray, member: np.ndarray, wins: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """A permutation replicate's window and reference counts, ``(w, f, width)`` each.

        ``features`` ``(m, f)`` are the rows the bins were fitted on and ``index`` their
        bins; each replicate's window is rows ``wins`` (``member`` marks them) and its
        reference the others. The window is binned as a fresh window would be against a
        reference of the others: a value beyond their range, or a value none of them
        took, lands in the bin a fresh row would (outside the range, or unseen), not in
        the one fitted with it. Without this, no replicate ever saw what production
        windows often hold (a row past the reference's maximum), and the null was too
        narrow (5 % false alarms at alpha 1.25 %).
        """
        window = index[wins]
        rest = self.counts - self.counts_of(window)
        for j, (cut, few) in enumerate(zip(self.cuts, self.categorical, strict=True)):
            if few:  # a value the rest never took: unseen
                gone = np.take_along_axis(rest[:, j, :] == 0, window[..., j], axis=1)
                window[..., j] = np.where(gone, len(cut), window[..., j])
            else:
                column = features[:, j]
                values = column[wins]
                high = np.where(member, -np.inf, column).max(axis=1, keepdims=True)
                low = np.where(member, np.inf, column).min(axis=1, keepdims=True)
                window[..., j] = np.where(values > high, len(cut),
                                          np.where(values < low, 0, window[..., j]))  # fmt: skip
        return self.counts_of(window), rest

    def psi_max(self, counts: np.ndarray, ref: np.ndarray | None = None) -> np.ndarray:
        """The largest PSI over features per window, from the windows' bin ``counts``
        ``(w, f, width)``, against the reference's counts or ``ref`` (one per window).

        Both sides get half a row in each of a feature's bins (Jeffreys) before they
        become shares: a window is tens of rows, and the data gate's floor of 1e-4 made
        one row in a bin the reference lacks weigh as much as a tenth of the window.
        """
        ref = self.counts if ref is None else ref
        return psi(self._smoothed(ref), self._smoothed(counts)).max(axis=-1)

    def _smoothed(self, counts: np.ndarray) -> np.ndarray:
        valid = self.valid
        c = np.where(valid, counts + PSEUDO, 0.0)
        return c / c.sum(axis=-1, keepdims=True)

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            # exact: a logged value matches a few-valued feature's bin only by equality
            "cuts": [c.tolist() for c in self.cuts],
            "categorical": list(self.categorical),
            "counts": self.counts.astype(np.int64).tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InputBins:
        """Raises ValueError on anything but well-formed bins."""
        try:
            mode = data["mode"]
            cuts = tuple(np.asarray(c, dtype=np.float64) for c in data["cuts"])
            categorical = tuple(data["categorical"])
            counts = np.asarray(data["counts"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed input bins ({exc})") from None
        if mode not in MODES or not cuts or len(categorical) != len(cuts):
            raise ValueError("malformed input bins (mode or features)")
        if not all(isinstance(c, bool) for c in categorical):
            raise ValueError("malformed input bins (categorical)")
        for cut in cuts:
            if cut.ndim != 1 or not len(cut) or not np.isfinite(cut).all():
                raise ValueError("malformed input bins (cuts)")
            if (np.diff(cut) <= 0).any():
                raise ValueError("malformed input bins (cuts)")
        width = max(len(c) for c in cuts) + 1
        finite = np.isfinite(counts).all() and (counts >= 0).all()
        if counts.shape != (len(cuts), width) or not finite:
            raise ValueError("malformed input bins (counts)")
        return cls(mode, cuts, categorical, counts)
