"""Input gradients of the loss, and the statistics that reveal gradient masking.

A model whose loss has (almost) no gradient w.r.t. its input defeats gradient-based attacks
without being robust: a non-differentiable input layer, or softmax saturation so strong
that float32 rounds the gradient to zero (defensive distillation's failure mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Below these the attack's gradient signal is gone (PGD's sign() of an exact zero is 0).
GRAD_L1_FLOOR = 1e-6
ZERO_GRAD_SHARE = 0.25


def ce_input_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the summed cross-entropy w.r.t. ``x``, and the logits at ``x``.

    The gradient is taken w.r.t. the input only, so the parameters' ``.grad`` stay
    untouched. Where no gradient path exists at all (a hard threshold in front of the
    model) the gradient is zero rather than an error.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = F.cross_entropy(logits, y, reduction="sum")
        grad = None
        if loss.requires_grad:
            (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
    return (torch.zeros_like(x) if grad is None else grad), logits.detach()


@dataclass(frozen=True)
class GradientStats:
    """Per-sample L1 norms of the input gradient of the cross-entropy.

    Attributes:
        n: Samples measured.
        median_l1: Median over samples of ``|d loss / d x|_1``.
        zero_share: Share of samples whose input gradient is exactly zero everywhere.
    """

    n: int
    median_l1: float
    zero_share: float

    @property
    def vanishing(self) -> bool:
        """Whether the gradient is too small or too often zero for gradient attacks."""
        return self.median_l1 < GRAD_L1_FLOOR or self.zero_share > ZERO_GRAD_SHARE

    def reason(self) -> str:
        """Why the gradient counts as vanishing, in one sentence."""
        return (
            f"input gradients vanish: median L1 norm {self.median_l1:.3g} "
            f"(floor {GRAD_L1_FLOOR:g}), {self.zero_share:.0%} of {self.n} samples have an "
            f"exactly zero gradient (limit {ZERO_GRAD_SHARE:.0%}); gradient attacks are blind "
            "here, so their robust accuracy overstates robustness"
        )


def gradient_stats(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256
) -> GradientStats:
    """Measures the input gradient of the cross-entropy on clean inputs."""
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.long)
    norms = []
    for start in range(0, len(x), batch_size):
        grad, _ = ce_input_gradient(
            model, x[start : start + batch_size], y[start : start + batch_size]
        )
        norms.append(grad.abs().flatten(1).sum(1))
    l1 = torch.cat(norms).double().numpy()
    return GradientStats(
        n=len(l1), median_l1=float(np.median(l1)), zero_share=float(np.mean(l1 == 0.0))
    )
