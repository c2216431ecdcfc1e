"""The evaluation sanity test of issue 5, and the flag and worst-case logic."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from aegis.config import EvaluateParams
from aegis.evaluate.gradients import GradientStats
from aegis.evaluate.robustness import AttackRun, assess_robustness, compare_to_pgd


def _run(name: str, correct: list[bool] | np.ndarray) -> AttackRun:
    return AttackRun(name, 0.1, np.asarray(correct, dtype=bool), 0.0)


@pytest.mark.slow
def test_undefended_model_is_far_less_robust_than_accurate(undefended_eval):
    r = undefended_eval.robustness
    assert r.clean_accuracy > 0.95
    assert r.pgd.accuracy < r.clean_accuracy - 0.3
    assert r.worst_case < r.clean_accuracy - 0.3
    assert r.worst_case <= min(run.accuracy for run in (r.pgd, *r.independent.values()))
    assert set(r.independent) == {"apgd-ce", "apgd-t"}
    assert undefended_eval.flags == []  # strong attacks agree: nothing masked


@pytest.mark.slow
def test_pgd_training_raises_the_worst_case_clearly(undefended_eval, pgd_trained_eval):
    robust, weak = pgd_trained_eval.robustness, undefended_eval.robustness
    margin = 2 * (robust.worst_case_stderr + weak.worst_case_stderr)
    assert robust.worst_case > weak.worst_case + max(0.15, margin)
    assert pgd_trained_eval.flags == []


@pytest.mark.slow
def test_gradient_masked_model_is_flagged(masked_eval):
    r = masked_eval.robustness
    codes = [f.code for f in r.flags]
    assert "square_beats_pgd" in codes and "vanishing_gradients" in codes
    square = r.independent["square"]
    assert square.n == 100
    # PGD is blind here and reports near-clean robustness; Square is not.
    assert r.pgd.accuracy > r.clean_accuracy - 0.05
    assert square.accuracy < r.pgd.correct[:100].mean() - 0.05
    assert r.gradients.zero_share == 1.0


def test_flag_needs_more_than_two_points_and_two_standard_errors():
    pgd = _run("pgd", [True] * 900 + [False] * 100)  # 0.90, SE on 1000 ~ 0.0095
    assert compare_to_pgd(pgd, _run("apgd-ce", [True] * 885 + [False] * 115)) is None
    flag = compare_to_pgd(pgd, _run("apgd-ce", [True] * 870 + [False] * 130))
    assert flag is not None and flag.code == "apgd-ce_beats_pgd"
    assert "0.870" in flag.reason and "0.900" in flag.reason
    # On 100 samples at 0.90, 2 SE (6 points) dominate the 2-point floor.
    pgd_small = _run("pgd", [True] * 90 + [False] * 10 + [True] * 900)
    assert compare_to_pgd(pgd_small, _run("square", [True] * 85 + [False] * 15)) is None
    flag = compare_to_pgd(pgd_small, _run("square", [True] * 80 + [False] * 20))
    assert flag is not None and flag.code == "square_beats_pgd"


def test_flag_compares_on_the_same_samples():
    pgd = _run("pgd", [True] * 100)
    assert compare_to_pgd(pgd, _run("square", [False] * 10)) is not None


def test_gradient_stats_vanishing():
    assert GradientStats(n=10, median_l1=0.0, zero_share=1.0).vanishing
    assert GradientStats(n=10, median_l1=1e-8, zero_share=0.0).vanishing
    assert GradientStats(n=10, median_l1=0.01, zero_share=0.5).vanishing
    assert not GradientStats(n=10, median_l1=0.01, zero_share=0.0).vanishing


def test_worst_case_is_per_sample_and_square_covers_a_prefix(digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    params = EvaluateParams(
        max_samples=30,
        pgd_steps=2,
        epsilons=[0.05],
        independent=["apgd-ce", "square"],
        square_samples=10,
        square_queries=5,
        apgd_steps=2,
    )
    r = assess_robustness(
        model,
        digits.x_test,
        digits.y_test,
        eps=0.1,
        domain=(0.0, 1.0),
        params=params,
        seed=0,
    )
    assert r.n == 30 and r.independent["square"].n == 10
    assert sorted(r.sweep) == [0.05, 0.1] and r.sweep[0.1] is r.pgd
    expected = r.clean & r.pgd.correct & r.independent["apgd-ce"].correct
    expected[:10] &= r.independent["square"].correct
    assert np.array_equal(r.worst_case_correct, expected)


def test_binary_model_skips_apgd_t():
    model = nn.Sequential(nn.Linear(6, 2)).eval()
    x = np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)
    y = np.zeros(20, dtype=np.int64)
    params = EvaluateParams(
        max_samples=20, pgd_steps=2, independent=["apgd-ce", "apgd-t"], epsilons=[], apgd_steps=2
    )
    r = assess_robustness(model, x, y, eps=0.5, domain=None, params=params, seed=0)
    assert "apgd-t" in r.skipped and set(r.independent) == {"apgd-ce"}
