"""Classification losses, among them two that bound what a wrong label can pull.

- ``ce``: cross-entropy, the default;
- ``gce``: generalized cross-entropy (Zhang & Sabuncu 2018), ``(1 - p_y^q) / q``: between
  CE (q -> 0) and the mean absolute error (q = 1), which a mislabelled row cannot
  dominate because its gradient vanishes where the model disagrees with the label;
- ``sce``: symmetric cross-entropy (Wang et al. 2019), ``alpha * CE + beta * RCE``, where
  the reverse CE ``-sum_k p_k log q_k`` takes the label distribution's zeros as
  ``log 1e-4`` (the paper's A = -4).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from aegis.config import TrainParams

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_LOG_ZERO = -4.0  # log of the clamped zero of a one-hot label (SCE's A)


def gce(logits: torch.Tensor, y: torch.Tensor, *, q: float) -> torch.Tensor:
    p_y = F.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1).clamp_min(1e-7)
    return ((1 - p_y.pow(q)) / q).mean()


def sce(logits: torch.Tensor, y: torch.Tensor, *, alpha: float, beta: float) -> torch.Tensor:
    probs = F.softmax(logits, dim=1).clamp(1e-7, 1.0)
    # -sum_k p_k log onehot_k: log 1 = 0 at the label, log 0 clamped to A elsewhere
    reverse = -_LOG_ZERO * (1 - probs.gather(1, y[:, None]).squeeze(1))
    return alpha * F.cross_entropy(logits, y) + beta * reverse.mean()


def loss_for(params: TrainParams) -> Loss:
    """The classification loss ``train.loss`` names, with its settings."""
    if params.loss == "gce":
        return lambda logits, y: gce(logits, y, q=params.gce_q)
    if params.loss == "sce":
        return lambda logits, y: sce(logits, y, alpha=params.sce_alpha, beta=params.sce_beta)
    return F.cross_entropy
