"""The noise-robust losses: their limits are the losses they generalize, and they train."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aegis.config import TrainParams
from aegis.train.losses import gce, loss_for, sce


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(32, 10, generator=gen), torch.randint(0, 10, (32,), generator=gen)


def test_gce_tends_to_cross_entropy_as_q_goes_to_zero_and_is_mae_at_one(batch):
    logits, y = batch
    assert gce(logits, y, q=1e-4).item() == pytest.approx(F.cross_entropy(logits, y).item(), 1e-3)
    p_y = F.softmax(logits, dim=1)[torch.arange(32), y]
    assert gce(logits, y, q=1.0).item() == pytest.approx((1 - p_y).mean().item(), 1e-6)


def test_sce_is_cross_entropy_without_its_reverse_term_and_bounded_by_it(batch):
    logits, y = batch
    ce = F.cross_entropy(logits, y).item()
    assert sce(logits, y, alpha=1.0, beta=0.0).item() == pytest.approx(ce, 1e-6)
    reverse = sce(logits, y, alpha=0.0, beta=1.0).item()
    assert 0 < reverse <= 4.0  # A = -4: at most 4 when the label gets no probability at all


def test_a_wrong_label_pulls_less_under_gce_than_under_ce():
    logits = torch.tensor([[8.0, 0.0]], requires_grad=True)  # confident in class 0
    wrong = torch.tensor([1])
    (ce_grad,) = torch.autograd.grad(F.cross_entropy(logits, wrong), logits)
    (gce_grad,) = torch.autograd.grad(gce(logits, wrong, q=0.7), logits)
    assert gce_grad.abs().sum() < 0.01 * ce_grad.abs().sum()


@pytest.mark.parametrize("loss", ["ce", "gce", "sce"])
def test_train_loss_selects_the_loss(batch, loss):
    logits, y = batch
    params = TrainParams(loss=loss)
    value = loss_for(params)(logits, y)
    assert value.ndim == 0 and torch.isfinite(value)
    if loss != "ce":
        assert value.item() != pytest.approx(F.cross_entropy(logits, y).item())
