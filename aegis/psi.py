"""The population stability index: one formula for the data gate and the production monitor.

``PSI = sum((q - p) * ln(q / p))`` over bins, ``p`` the reference's shares and ``q`` the
new sample's, each floored at :data:`EPS` so a bin never seen before counts instead of
dividing by zero. Rules of thumb: < 0.1 no shift, 0.1-0.25 moderate, > 0.25 large.
:mod:`aegis.data.drift` gates dataset versions with it; :mod:`aegis.evaluate.input_shift`
gives the monitor its per-feature input signal.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-4


def psi(ref, new) -> np.ndarray:
    """PSI along the last axis of ``ref`` and ``new`` (shares, broadcast against each other)."""
    p = np.maximum(np.asarray(ref, dtype=np.float64), EPS)
    q = np.maximum(np.asarray(new, dtype=np.float64), EPS)
    return ((q - p) * np.log(q / p)).sum(axis=-1)


def bin_shares(values: np.ndarray, edges) -> np.ndarray:
    """The share of ``values`` per bin ``(-inf, e0], (e0, e1], ..., (e_last, inf)``."""
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return counts / max(int(counts.sum()), 1)
