"""Membership-inference maths: per-example losses, ROC/AUC and TPR at FPR, the null AUC spread,
and the (ε, δ)-DP bound on TPR, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from supermask_cli import membership as mi


def test_per_example_losses_are_torch_cross_entropy_and_squared_error():
    # Prepare
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0], [1000.0, 0.0, -1000.0]])
    labels = np.array([2, 0, 1])
    # Execute
    got = mi.per_example_losses(logits, labels)
    # Assert
    want = F.cross_entropy(torch.tensor(logits), torch.tensor(labels), reduction="none").numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[1] == pytest.approx(math.log(3))
    assert got[2] == pytest.approx(1000.0)  # stable where exp overflows
    np.testing.assert_allclose(mi.per_example_losses(np.array([[1.5], [-2.0]]), np.array([0.5, 1.0])), [1.0, 9.0])


def test_scores_rank_low_loss_and_large_improvement_as_member():
    np.testing.assert_array_equal(mi.loss_scores(np.array([0.1, 2.0])), [-0.1, -2.0])
    np.testing.assert_allclose(mi.calibrated_scores(np.array([0.1, 2.0]), np.array([0.7, 1.0])), [0.6, -1.0])
    with pytest.raises(ValueError):
        mi.calibrated_scores(np.zeros(2), np.zeros(3))


def test_attack_auc_and_tpr_at_fpr_by_hand():
    # members 3, 1; non-members 2, 0: pairs won 3>2, 3>0, 1>0, lost 1<2 -> AUC 3/4
    result = mi.attack("loss", np.array([3.0, 1.0]), np.array([2.0, 0.0]))
    assert result.auc == pytest.approx(0.75)
    # at FPR 0 (every target below 1/2) the best threshold is > 2: one member of two
    assert result.tpr_at_fpr == {"0.001": 0.5, "0.01": 0.5, "0.1": 0.5}
    separated = mi.attack("x", np.arange(10.0, 20.0), np.arange(10.0))
    assert separated.auc == 1.0 and set(separated.tpr_at_fpr.values()) == {1.0}
    assert mi.attack("x", np.arange(10.0), np.arange(10.0, 20.0)).auc == 0.0
    ties = mi.attack("x", np.zeros(5), np.zeros(7))
    assert ties.auc == 0.5 and set(ties.tpr_at_fpr.values()) == {0.0}


def test_tpr_at_takes_the_best_point_at_or_below_the_target():
    fpr = np.array([0.0, 0.005, 0.01, 0.05, 0.2, 1.0])
    tpr = np.array([0.0, 0.3, 0.4, 0.6, 0.9, 1.0])
    assert [mi.tpr_at(fpr, tpr, f) for f in mi.FPRS] == [0.0, 0.4, 0.6]


def test_attack_refuses_empty_sets_and_non_finite_scores():
    with pytest.raises(ValueError):
        mi.attack("x", np.array([]), np.array([1.0]))
    with pytest.raises(ValueError):
        mi.attack("x", np.array([np.nan]), np.array([1.0]))


def test_null_auc_std_matches_simulation():
    # The tolerance the scenario tests use for "AUC ≈ 0.5" rests on this formula.
    rng = np.random.default_rng(0)
    m, n, sims = 40, 60, 4000
    draws = rng.normal(size=(sims, m + n))  # one distribution: the first m are "members"
    ranks = rankdata(draws, axis=1)
    aucs = (ranks[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)  # Mann-Whitney U / (m n)
    assert mi.attack("x", draws[0, :m], draws[0, m:]).auc == pytest.approx(aucs[0])
    assert mi.null_auc_std(m, n) == pytest.approx(math.sqrt(101 / (12 * 40 * 60)))
    assert np.std(aucs) == pytest.approx(mi.null_auc_std(m, n), rel=0.05)
    assert abs(np.mean(aucs) - 0.5) < 4 * mi.null_auc_std(m, n) / math.sqrt(sims)


@pytest.mark.parametrize(
    ("fpr", "epsilon", "delta", "want"),
    [
        (0.01, 1.0, 1e-5, math.e * 0.01 + 1e-5),  # e^ε·FPR + δ binds
        (0.001, 3.0, 1e-5, math.exp(3) * 0.001 + 1e-5),
        (0.1, 8.0, 1e-5, 1 - math.exp(-8) * (1 - 1e-5 - 0.1)),  # the other trade-off binds near 1
        (0.5, 1.0, 0.0, 1 - math.exp(-1) * 0.5),
        (0.3, 0.0, 0.0, 0.3),  # ε = 0: no test beats chance
        (0.0, 2.0, 0.01, 0.01),
        (1.0, 2.0, 0.01, 1.0),
    ],
)
def test_dp_tpr_bound_matches_the_formula(fpr, epsilon, delta, want):
    assert mi.dp_tpr_bound(fpr, epsilon, delta) == pytest.approx(want, rel=1e-12)


def test_dp_bound_is_the_linear_term_below_the_knee():
    # Below FPR (1 - δ)/(1 + e^ε) (0.119 at ε = 2) the bound is e^ε·FPR + δ; above it, less.
    for epsilon in (0.5, 1.0, 2.0):
        got = mi.bound_at_fprs(epsilon, 1e-5)
        assert list(got) == ["0.001", "0.01", "0.1"]
        for key, value in got.items():
            assert value == pytest.approx(min(1.0, math.exp(epsilon) * float(key) + 1e-5))
    assert mi.dp_tpr_bound(0.1, 3.0, 1e-5) < min(1.0, math.exp(3.0) * 0.1)
    grid = np.linspace(0, 1, 101)
    bound = mi.dp_tpr_bound(grid, 2.0, 1e-3)
    assert (np.diff(bound) >= 0).all() and (bound >= grid - 1e-12).all() and bound.max() <= 1.0


def test_dp_auc_bound():
    assert mi.dp_auc_bound(0.0, 0.0) == pytest.approx(0.5)
    assert mi.dp_auc_bound(1.0, 0.0) == pytest.approx(math.e / (1 + math.e))
    grid = np.linspace(0, 1, 200_001)
    curve = mi.dp_tpr_bound(grid, 3.0, 1e-2)
    assert mi.dp_auc_bound(3.0, 1e-2) == pytest.approx(((curve[1:] + curve[:-1]) / 2).sum() / 200_000, abs=1e-8)
    assert mi.dp_auc_bound(50.0, 1e-5) == pytest.approx(1.0)
