"""Tests for supermask_cli.rules: every rule against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from conftest import aggregate_stacked
from supermask_cli import checkpoint
from supermask_cli import rules as agg
from supermask_cli.mask.functions import PROB_EPS
from supermask_cli.server_opt import ServerOptimizer


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _w(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# --------------------------------------------------------------------------- weighted_mean


def test_weighted_mean_hand_computed():
    # Prepare
    x = _t([[1.0, 0.0], [3.0, 1.0], [5.0, 1.0]])
    w = _w([1, 1, 2])
    # Execute
    out = agg.weighted_mean(x, w)
    # Assert: (1 + 3 + 10) / 4 = 3.5 ; (0 + 1 + 2) / 4 = 0.75
    assert out.dtype == torch.float32
    assert torch.equal(out, _t([3.5, 0.75]))


def test_weighted_mean_equal_weights_is_plain_mean():
    x = _t([[[2.0]], [[4.0]]])
    assert torch.equal(agg.weighted_mean(x, _w([7, 7])), _t([[3.0]]))


# --------------------------------------------------------------------------- weighted_median


def test_weighted_median_odd_n():
    x = _t([[3.0, 10.0], [1.0, 20.0], [2.0, 30.0]])
    assert torch.equal(agg.weighted_median(x, _w([1, 1, 1])), _t([2.0, 20.0]))


def test_weighted_median_even_n_is_midpoint():
    x = _t([[4.0], [1.0], [3.0], [2.0]])
    assert torch.equal(agg.weighted_median(x, _w([1, 1, 1, 1])), _t([2.5]))
    assert torch.equal(agg.weighted_median(_t([[0.0], [1.0]]), _w([5, 5])), _t([0.5]))


def test_weighted_median_follows_weights():
    # x sorted [1, 2, 10] with weights [1, 1, 5]: 10 holds more than half the weight
    x = _t([[10.0], [1.0], [2.0]])
    assert torch.equal(agg.weighted_median(x, _w([5, 1, 1])), _t([10.0]))
    # [1 (w3), 3 (w1)]: 1 holds 3/4 of the weight
    assert torch.equal(agg.weighted_median(_t([[3.0], [1.0]]), _w([1, 3])), _t([1.0]))
    # exact half split by weight: [1 (w2), 5 (w1), 9 (w1)] -> cumulative 2 of 4 at 1 -> midpoint (1+5)/2
    assert torch.equal(agg.weighted_median(_t([[9.0], [1.0], [5.0]]), _w([1, 2, 1])), _t([3.0]))


def test_weighted_median_is_robust_to_one_outlier():
    x = _t([[1.0], [2.0], [1e6]])
    assert torch.equal(agg.weighted_median(x, _w([1, 1, 1])), _t([2.0]))


# --------------------------------------------------------------------------- trimmed_mean


def test_trimmed_mean_drops_one_each_side_of_four():
    # Prepare: beta 0.25, N=4 -> k = 1
    x = _t([[100.0, 1.0], [1.0, 2.0], [3.0, 3.0], [2.0, -50.0]])
    w = _w([1, 1, 3, 1])
    # Execute
    out = agg.trimmed_mean(x, w, 0.25)
    # Assert: col 0 keeps 2 (w1), 3 (w3) -> 11/4 ; col 1 keeps 1 (w1), 2 (w1) -> 1.5
    assert torch.equal(out, _t([2.75, 1.5]))


def test_trimmed_mean_zero_trim_is_weighted_mean():
    x = _t([[1.0], [2.0], [4.0]])
    w = _w([1, 2, 1])
    assert torch.equal(agg.trimmed_mean(x, w, 0.2), agg.weighted_mean(x, w))  # floor(0.6) = 0


def test_trimmed_mean_errors_when_nothing_remains():
    with pytest.raises(ValueError, match="leaves no client"):
        agg.trimmed_mean(_t([[1.0], [2.0]]), _w([1, 1]), 0.5)


# --------------------------------------------------------------------------- capped_weights


def test_capped_weights_caps_the_largest():
    out = agg.capped_weights(_w([100, 1, 1, 1]), 0.5)
    assert out.dtype == torch.float64
    assert torch.equal(out, _w([3, 1, 1, 1]))
    assert out.max() / out.sum() == 0.5


def test_capped_weights_keeps_client_order():
    assert torch.equal(agg.capped_weights(_w([1, 100, 1, 1]), 0.5), _w([1, 3, 1, 1]))


def test_capped_weights_two_large_clients():
    # shares at most 0.3 of 5 clients: [50, 40, 5, 3, 2] -> cap c on the two largest:
    # c = 0.3 * (5 + 3 + 2) / (1 - 0.3 * 2) = 7.5 and 5 <= 7.5
    out = agg.capped_weights(_w([2, 50, 3, 40, 5]), 0.3)
    assert torch.allclose(out, _w([2, 7.5, 3, 7.5, 5]), rtol=0, atol=1e-12)


def test_capped_weights_no_cap_needed():
    assert torch.equal(agg.capped_weights(_w([1, 1, 1, 1]), 0.5), _w([1, 1, 1, 1]))
    assert torch.equal(agg.capped_weights(_w([2, 1, 1]), 1.0), _w([2, 1, 1]))


def test_capped_weights_equal_when_share_times_n_at_most_one():
    assert torch.equal(agg.capped_weights(_w([100, 1, 1]), 0.3), _w([1, 1, 1]))
    assert torch.equal(agg.capped_weights(_w([100, 1, 1, 1]), 0.25), _w([1, 1, 1, 1]))


def test_reduce_dispatch():
    x = _t([[100.0], [1.0], [1.0], [1.0]])
    w = _w([100, 1, 1, 1])
    assert torch.equal(agg.reduce("mean", x, w), _t([(10000 + 3) / 103]))
    assert torch.equal(agg.reduce("capped", x, w, max_share=0.5), _t([(300 + 3) / 6]))
    assert torch.equal(agg.reduce("median", x, w), _t([100.0]))
    assert torch.equal(agg.reduce("trimmed_mean", x, w, trim_ratio=0.25), _t([1.0]))
    with pytest.raises(ValueError, match="unknown aggregation rule 'mode'"):
        agg.reduce("mode", x, w)


# --------------------------------------------------------------------------- finalize


def test_finalize_bernoulli_masks_become_clamped_probs():
    # Prepare
    sums = {"mask/a": _t([0.0, 0.0005, 0.5, 0.9999, 1.0]), "head/h": _t([-3.0, 2.0])}
    # Execute
    out = agg.finalize(sums, "bernoulli")
    # Assert
    assert set(out) == {"probs/a", "head/h"}
    assert torch.equal(out["probs/a"], _t([PROB_EPS, PROB_EPS, 0.5, 1 - PROB_EPS, 1 - PROB_EPS]))
    assert torch.equal(out["head/h"], _t([-3.0, 2.0]))


def test_finalize_threshold_masks_weighted_majority_ties_kept():
    sums = {"mask/a": _t([[0.0, 0.49], [0.5, 1.0]]), "head/h": _t([0.25])}
    out = agg.finalize(sums, "threshold")
    assert set(out) == {"mask/a", "head/h"}
    assert out["mask/a"].dtype == torch.bool
    assert torch.equal(out["mask/a"], torch.tensor([[False, False], [True, True]]))
    assert torch.equal(out["head/h"], _t([0.25]))


def test_finalize_scaling_passes_through():
    sums = {"scale/a": _t([0.5, 2.0]), "head/h": _t([1.0])}
    out = agg.finalize(sums, "scaling")
    assert set(out) == {"scale/a", "head/h"}
    assert torch.equal(out["scale/a"], _t([0.5, 2.0]))


# --------------------------------------------------------------------------- server step (more in test_server_opt.py)


def test_aggregate_stacked_applies_server_lr_for_scaling():
    clients = [{"scale/a": _t([1.0, 3.0])}, {"scale/a": _t([3.0, 1.0])}]
    out = aggregate_stacked(
        clients, [1.0, 1.0], "scaling", "median", previous={"scale/a": _t([1.0, 1.0])}, server=ServerOptimizer(lr=0.5)
    )
    assert torch.equal(out["scale/a"], _t([1.5, 1.5]))


def test_global_key():
    assert checkpoint.global_key("mask/m", "bernoulli") == "probs/m"
    assert checkpoint.global_key("mask/m", "threshold") == "mask/m"
    assert checkpoint.global_key("head/m", "bernoulli") == "head/m"
    assert checkpoint.global_key("scale/m", "scaling") == "scale/m"


def test_aggregate_stacked_threshold_majority():
    # two clients, equal weights: a 1/0 split is a tie and is kept
    c0 = {"mask/a": torch.tensor([True, True, False, False]), "head/h": _t([1.0, 0.0])}
    c1 = {"mask/a": torch.tensor([True, False, True, False]), "head/h": _t([3.0, 2.0])}
    out = aggregate_stacked([c0, c1], [5, 5], "threshold")
    assert torch.equal(out["mask/a"], torch.tensor([True, True, True, False]))
    assert torch.equal(out["head/h"], _t([2.0, 1.0]))
    # weights 1:3 -> the heavier client decides
    out = aggregate_stacked([c0, c1], [1, 3], "threshold")
    assert torch.equal(out["mask/a"], torch.tensor([True, False, True, False]))
    assert torch.equal(out["head/h"], _t([2.5, 1.5]))


def test_aggregate_stacked_bernoulli_probs():
    c = [{"mask/a": torch.tensor([True, True, False])}, {"mask/a": torch.tensor([True, False, False])},
         {"mask/a": torch.tensor([True, False, False])}, {"mask/a": torch.tensor([True, True, False])}]
    out = aggregate_stacked(c, [1, 1, 1, 1], "bernoulli")
    assert set(out) == {"probs/a"}
    assert torch.equal(out["probs/a"], _t([1 - PROB_EPS, 0.5, PROB_EPS]))


def test_aggregate_stacked_median_and_trimmed_rules():
    c = [{"scale/a": _t([v])} for v in (1.0, 2.0, 3.0, 100.0)]
    assert torch.equal(aggregate_stacked(c, [1, 1, 1, 1], "scaling", "median")["scale/a"], _t([2.5]))
    out = aggregate_stacked(c, [1, 1, 1, 1], "scaling", "trimmed_mean", trim_ratio=0.25)
    assert torch.equal(out["scale/a"], _t([2.5]))
    out = aggregate_stacked(c, [1, 1, 1, 97], "scaling", "capped", max_share=0.5)
    # capped: [1, 1, 1, 3] -> (1 + 2 + 3 + 300) / 6
    assert torch.equal(out["scale/a"], _t([306 / 6]))


# --------------------------------------------------------------------------- RunningMean


@pytest.mark.parametrize("kind", ["scaling", "bernoulli", "threshold"])
def test_running_mean_equals_stacked_mean(kind):
    # Prepare
    g = torch.Generator().manual_seed(0)
    clients = []
    for _ in range(5):
        if kind == "scaling":
            tensors = {"scale/a": torch.randn(7, generator=g), "scale/b": torch.randn(3, generator=g)}
        else:
            tensors = {"mask/a": torch.rand(4, 6, generator=g) < 0.5, "mask/b": torch.rand(3, generator=g) < 0.3}
        tensors["head/h"] = torch.randn(2, 3, generator=g)
        clients.append(tensors)
    weights = [3.0, 1.0, 7.0, 2.0, 5.0]
    # Execute
    running = agg.RunningMean()
    for tensors, weight in zip(clients, weights):
        running.add({k: v.float() for k, v in tensors.items()}, weight)
    streamed = agg.finalize(running.result(), kind)
    stacked = aggregate_stacked(clients, weights, kind, "mean")
    # Assert
    assert running.total == 18.0
    assert set(streamed) == set(stacked)
    for key in stacked:
        assert streamed[key].dtype == stacked[key].dtype
        if stacked[key].dtype == torch.bool:
            assert torch.equal(streamed[key], stacked[key])
        else:
            torch.testing.assert_close(streamed[key], stacked[key], rtol=1e-6, atol=1e-7)
