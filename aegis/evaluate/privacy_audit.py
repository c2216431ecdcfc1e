"""Membership-inference audit: a loss-threshold attack (Yeom et al. 2018).

The attacker guesses "member" when a sample's loss is below a threshold; sweeping the
threshold gives a ROC curve over a balanced set of training (member) and held-out
(non-member) samples. AUC 0.5 means the losses leak nothing; TPR at 1 % FPR measures the
leak on the samples the attacker is most sure about (Carlini et al. 2022).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LOW_FPR = 0.01


@dataclass(frozen=True)
class MembershipAudit:
    """Result of the loss-threshold attack.

    Attributes:
        auc: Area under the ROC curve (ties count one half).
        tpr_at_1fpr: Highest true-positive rate at a false-positive rate of at most 1 %.
        n_members: Training samples audited.
        n_nonmembers: Held-out samples audited.
        fpr: ROC curve, false-positive rates (ascending, from 0 to 1).
        tpr: ROC curve, true-positive rates.
    """

    auc: float
    tpr_at_1fpr: float
    n_members: int
    n_nonmembers: int
    fpr: list[float]
    tpr: list[float]

    def to_dict(self) -> dict:
        """JSON-able result, curve included."""
        return {
            "auc": self.auc,
            "tpr_at_1fpr": self.tpr_at_1fpr,
            "n_members": self.n_members,
            "n_nonmembers": self.n_nonmembers,
            "fpr": self.fpr,
            "tpr": self.tpr,
        }


def roc_curve(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC of the rule "score >= threshold means positive", one point per distinct score.

    Returns:
        ``(fpr, tpr)``, both starting at 0 and ending at 1.
    """
    scores = np.concatenate([positive, negative]).astype(np.float64)
    labels = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    # Tied scores share one threshold, so the curve steps diagonally across them.
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_pos = np.cumsum(labels)[last_of_tie]
    false_pos = last_of_tie + 1 - true_pos
    tpr = np.r_[0.0, true_pos / len(positive)]
    fpr = np.r_[0.0, false_pos / len(negative)]
    return fpr, tpr


def loss_threshold_audit(
    member_losses: np.ndarray, nonmember_losses: np.ndarray
) -> MembershipAudit:
    """Runs the loss-threshold attack on given per-sample losses.

    Raises:
        ValueError: Either side is empty or a loss is NaN.
    """
    members = np.asarray(member_losses, dtype=np.float64).ravel()
    nonmembers = np.asarray(nonmember_losses, dtype=np.float64).ravel()
    if members.size == 0 or nonmembers.size == 0:
        raise ValueError("membership audit needs at least one member and one non-member")
    if np.isnan(members).any() or np.isnan(nonmembers).any():
        raise ValueError("membership audit: a loss is NaN")
    fpr, tpr = roc_curve(-members, -nonmembers)  # low loss = member
    auc = float(np.trapezoid(tpr, fpr))
    return MembershipAudit(
        auc=auc,
        tpr_at_1fpr=float(tpr[fpr <= LOW_FPR].max()),
        n_members=int(members.size),
        n_nonmembers=int(nonmembers.size),
        fpr=fpr.tolist(),
        tpr=tpr.tolist(),
    )


@torch.no_grad()
def per_sample_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512
) -> np.ndarray:
    """Cross-entropy of each sample."""
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.long)
    losses = [
        F.cross_entropy(model(x[i : i + batch_size]), y[i : i + batch_size], reduction="none")
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(losses).double().numpy()


def membership_audit(
    model: nn.Module,
    x_members: torch.Tensor,
    y_members: torch.Tensor,
    x_nonmembers: torch.Tensor,
    y_nonmembers: torch.Tensor,
    *,
    seed: int,
) -> MembershipAudit:
    """Loss-threshold audit of ``model`` on balanced random subsets of equal size.

    Args:
        model: A classifier returning logits, in eval mode.
        x_members: Training inputs.
        y_members: Training labels.
        x_nonmembers: Held-out inputs the model never trained on.
        y_nonmembers: Held-out labels.
        seed: Seed of the subset draws.
    """
    xm, ym = torch.as_tensor(x_members), torch.as_tensor(y_members)
    xn, yn = torch.as_tensor(x_nonmembers), torch.as_tensor(y_nonmembers)
    n = min(len(xm), len(xn))
    gen = torch.Generator().manual_seed(seed)
    pick_m = torch.randperm(len(xm), generator=gen)[:n]
    pick_n = torch.randperm(len(xn), generator=gen)[:n]
    return loss_threshold_audit(
        per_sample_loss(model, xm[pick_m], ym[pick_m]),
        per_sample_loss(model, xn[pick_n], yn[pick_n]),
    )
