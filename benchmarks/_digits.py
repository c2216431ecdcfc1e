"""Helpers shared by the ML benchmarks (bench_defenses, bench_dp): digits data and machine load.

Not a benchmark itself (the leading underscore keeps ``make bench`` from running it).
The digits frame is built exactly as ``aegis data import-sklearn digits`` writes it
(``pixel_<r>_<c>`` float columns, int64 ``label``) and goes through
``aegis.train.data.prepare``, so split, scaling and tensors are the pipeline's own.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

# Harmless and repeated thousands of times in a run; silenced so the table stays readable.
_NOISE = (
    "Full backward hook is firing",  # Opacus: first layer's input needs no gradient
    "Optimal order is the largest alpha",  # Opacus RDP hint; the bound holds
    "Secure RNG turned off",
    "Using a non-full backward hook",
)


def quiet_warnings() -> None:
    """Silences known-harmless Opacus/torch warnings for the whole process."""
    for message in _NOISE:
        warnings.filterwarnings("ignore", message=message)
    # Opacus's PRV accountant takes log(0) at sample rate 1 (full batches); the result holds.
    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"opacus\.")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def digits_frame():
    """scikit-learn's digits as the pipeline ingests them (1797 rows, 64 pixels + label)."""
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame
    frame = frame.rename(columns=lambda c: re.sub(r"[^0-9a-zA-Z]+", "_", c).strip("_").lower())
    frame = frame.rename(columns={"target": "label"})
    frame["label"] = frame["label"].astype("int64")
    return frame


def prepared_digits(params):
    """``aegis.train.data.prepare`` on digits with ``params`` (seed and fractions)."""
    from aegis.train.data import prepare

    return prepare(digits_frame(), params)


def split_tensors(prepared) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Model inputs and labels of the train, val and test splits (the pipeline's preprocessing)."""
    from aegis.train.data import to_tensors

    frame, spec, split = prepared
    return {
        name: to_tensors(frame, getattr(split, name), spec) for name in ("train", "val", "test")
    }


def weights_digest(model: nn.Module) -> str:
    """``sha256:`` over the state dict (names, shapes, float32 bytes): names a trained model."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return "sha256:" + h.hexdigest()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on the machine inflates wall times."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def torch_facts() -> dict[str, Any]:
    """Versions and thread settings that decide the ML timings."""
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "versions": {
            d: version(d)
            for d in (
                "torch",
                "opacus",
                "adversarial-robustness-toolbox",
                "numpy",
                "scikit-learn",
                "multiprocess",
            )
        },
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }


def binomial_stderr(p: float, n: int) -> float:
    return float(np.sqrt(p * (1 - p) / n)) if n else float("nan")
