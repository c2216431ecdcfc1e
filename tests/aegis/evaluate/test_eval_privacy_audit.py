"""Loss-threshold membership inference: ROC, AUC and TPR at 1 % FPR."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from aegis.evaluate.privacy_audit import loss_threshold_audit, membership_audit, roc_curve


def test_same_distribution_gives_chance():
    rng = np.random.default_rng(0)
    audit = loss_threshold_audit(rng.exponential(size=5000), rng.exponential(size=5000))
    assert audit.auc == pytest.approx(0.5, abs=0.02)
    assert audit.tpr_at_1fpr < 0.03
    assert audit.n_members == audit.n_nonmembers == 5000


def test_separable_losses_give_perfect_inference():
    rng = np.random.default_rng(1)
    audit = loss_threshold_audit(rng.uniform(0, 0.1, 300), rng.uniform(1, 2, 300))
    assert audit.auc == 1.0
    assert audit.tpr_at_1fpr == 1.0


def test_roc_matches_sklearn_with_ties():
    rng = np.random.default_rng(2)
    members = rng.integers(0, 20, 400).astype(float)  # many ties
    nonmembers = rng.integers(3, 25, 300).astype(float)
    audit = loss_threshold_audit(members, nonmembers)
    labels = np.r_[np.ones(400), np.zeros(300)]
    scores = -np.r_[members, nonmembers]
    assert audit.auc == pytest.approx(roc_auc_score(labels, scores))
    sk_fpr, sk_tpr, _ = sk_roc_curve(labels, scores, drop_intermediate=False)
    fpr, tpr = roc_curve(-members, -nonmembers)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert audit.fpr[0] == audit.tpr[0] == 0.0 and audit.fpr[-1] == audit.tpr[-1] == 1.0


def test_all_ties_give_exactly_one_half():
    audit = loss_threshold_audit(np.ones(10), np.ones(10))
    assert audit.auc == 0.5 and audit.tpr_at_1fpr == 0.0


def test_refuses_empty_or_nan():
    with pytest.raises(ValueError):
        loss_threshold_audit(np.array([]), np.ones(3))
    with pytest.raises(ValueError):
        loss_threshold_audit(np.array([np.nan]), np.ones(3))


def test_membership_audit_is_balanced_and_seeded(digits, undefended):
    def run(seed: int):
        return membership_audit(
            undefended,
            digits.x_train,
            digits.y_train,
            digits.x_test[:100],
            digits.y_test[:100],
            seed=seed,
        )

    audit = run(0)
    assert audit.n_members == audit.n_nonmembers == 100
    assert audit == run(0)
    assert 0.3 < audit.auc < 0.8  # a small, briefly trained CNN barely overfits
    assert torch.is_grad_enabled()
