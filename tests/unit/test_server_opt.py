"""Tests for supermask_cli.server_opt and the ``bayes`` rule: hand-computed values, unequal inputs."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import aggregate_stacked
from supermask_cli import rules as agg
from supermask_cli import server_opt
from supermask_cli.mask.functions import PROB_EPS
from supermask_cli.server_opt import ServerOptimizer


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _d(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _close(a, b, tol=1e-6):
    torch.testing.assert_close(a.double(), torch.as_tensor(b, dtype=torch.float64), rtol=0, atol=tol)


# --------------------------------------------------------------------------- update (one step)


def test_sgd_step_is_lr_times_delta_and_keeps_no_state():
    step, m, v = server_opt.update(ServerOptimizer("sgd", lr=0.5), _d([2.0, -4.0]), None, None)
    _close(step, [1.0, -2.0])
    assert m is None and v is None


def test_momentum_accumulates_undamped_delta():
    # m = 0.5 * [1, 2] + [2, -4] = [2.5, -3]; step = 2 * m
    opt = ServerOptimizer("momentum", lr=2.0, beta1=0.5)
    step, m, v = server_opt.update(opt, _d([2.0, -4.0]), _d([1.0, 2.0]), None)
    _close(m, [2.5, -3.0])
    _close(step, [5.0, -6.0])
    assert v is None


def test_adam_hand_computed():
    # m = .5*[1, 0] + .5*[2, -2] = [1.5, -1]; v = .75*[4, 20] + .25*[4, 4] = [4, 16]
    # step = 1 * m / (sqrt(v) + 1) = [1.5/3, -1/5]
    opt = ServerOptimizer("adam", lr=1.0, beta1=0.5, beta2=0.75, tau=1.0)
    step, m, v = server_opt.update(opt, _d([2.0, -2.0]), _d([1.0, 0.0]), _d([4.0, 20.0]))
    _close(m, [1.5, -1.0])
    _close(v, [4.0, 16.0])
    _close(step, [0.5, -0.2])


def test_yogi_moves_v_by_a_fixed_amount_towards_delta_squared():
    # Δ² = [1, 4]; v = [4, 1]: v - .25*Δ²*sign(v - Δ²) = [4 - .25, 1 + 1] (adam: [3.25, 1.75])
    opt = ServerOptimizer("yogi", lr=0.1, beta1=0.0, beta2=0.75, tau=0.5)
    step, m, v = server_opt.update(opt, _d([1.0, 2.0]), _d([9.0, 9.0]), _d([4.0, 1.0]))
    _close(m, [1.0, 2.0])  # beta1 0: m is the delta
    _close(v, [3.75, 2.0])
    _close(step, [0.1 * 1.0 / (math.sqrt(3.75) + 0.5), 0.1 * 2.0 / (math.sqrt(2.0) + 0.5)])


def test_adam_state_starts_at_zero():
    opt = ServerOptimizer("adam", lr=1.0, beta1=0.9, beta2=0.99, tau=0.0)
    step, m, v = server_opt.update(opt, _d([3.0, -0.5]), None, None)
    _close(m, [0.3, -0.05])
    _close(v, [0.09, 0.0025])
    _close(step, [1.0, -1.0])  # the first step is lr * sign(Δ) when tau is 0


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="unknown server optimizer"):
        ServerOptimizer("adagrad")


def test_state_groups_per_optimizer():
    assert server_opt.state_groups("sgd") == ()
    assert server_opt.state_groups("momentum") == ("opt_m",)
    assert server_opt.state_groups("adam") == server_opt.state_groups("yogi") == ("opt_m", "opt_v")


# --------------------------------------------------------------------------- server_step (spaces, state)


def test_plain_averaging_is_the_identity():
    reduced = {"mask/a": _t([0.4]), "head/h": _t([1.0])}
    out, state = server_opt.server_step(reduced, {}, "bernoulli", ServerOptimizer())
    assert out is reduced and state == {}


def test_bernoulli_steps_in_logit_space():
    # previous probs 0.5 -> score 0; mean mask σ(1) -> Δ = 1; sgd lr 2 -> score 2 -> σ(2).
    # A mean of 1.0 is clamped to 1 - ε before the logit: Δ = logit(1 - ε); lr 0.5 -> σ(logit(1 - ε) / 2)
    reduced = {"mask/a": _t([1 / (1 + math.exp(-1.0)), 1.0]), "head/h": _t([1.0, -1.0])}
    previous = {"probs/a": _t([0.5, 0.5]), "head/h": _t([0.0, 0.5])}
    out, state = server_opt.server_step(reduced, previous, "bernoulli", ServerOptimizer("sgd", lr=2.0))
    _close(out["mask/a"][0], 1 / (1 + math.exp(-2.0)))
    assert state == {}
    _close(out["head/h"], [2.0, -2.5])  # heads step in their own space: 0.5 + 2 * (-1 - 0.5)
    half = server_opt.server_step(reduced, previous, "bernoulli", ServerOptimizer("sgd", lr=0.5))[0]
    logit_max = math.log((1 - PROB_EPS) / PROB_EPS)
    _close(half["mask/a"][1], 1 / (1 + math.exp(-logit_max / 2)))


def test_server_head_lr_steps_the_head_at_its_own_rate():
    # adam, tau 0, fresh state: the first step is rate * sign(Δ) on every coordinate
    reduced = {"mask/a": _t([1 / (1 + math.exp(-1.0))]), "head/h": _t([1.0, -1.0])}
    previous = {"probs/a": _t([0.5]), "head/h": _t([0.0, 0.0])}
    opt = ServerOptimizer("adam", lr=0.5, beta1=0.9, beta2=0.99, tau=0.0, head_lr=0.01)
    out, _ = server_opt.server_step(reduced, previous, "bernoulli", opt)
    _close(out["mask/a"], [1 / (1 + math.exp(-0.5))])  # score 0 + 0.5
    _close(out["head/h"], [0.01, -0.01])
    assert not ServerOptimizer("sgd", lr=1.0, head_lr=0.5).is_identity
    assert ServerOptimizer("sgd", lr=1.0, head_lr=1.0).is_identity


def test_server_head_lr_comes_from_the_config_and_stays_out_of_older_digests():
    from supermask_cli.config import config_digest, config_from_dict

    raw = {"run_dir": "r", "model": {"name": "m"}, "federation": {"server_optimizer": "adam", "server_lr": 0.3}}
    plain = config_from_dict(raw, "c.yaml")
    assert server_opt.from_config(plain.federation).head_lr is None
    split = config_from_dict({**raw, "federation": {**raw["federation"], "server_head_lr": 0.01}}, "c.yaml")
    assert server_opt.from_config(split.federation).rate("head/h") == 0.01
    assert server_opt.from_config(split.federation).rate("probs/a") == 0.3
    assert config_digest(plain) != config_digest(split)
    # the digest this config had before server_head_lr existed: unset, the key stays out of it
    assert config_digest(plain) == "cdc44f67a01149f1fa6c97f13d2cf3fea2716b88553368f7b9d9b0c177a153b0"


def test_threshold_votes_pass_through_and_only_the_head_keeps_state():
    reduced = {"mask/a": _t([0.4, 0.6]), "head/h": _t([2.0])}
    previous = {"mask/a": torch.tensor([True, False]), "head/h": _t([1.0])}
    opt = ServerOptimizer("momentum", lr=1.0, beta1=0.5)
    out, state = server_opt.server_step(reduced, previous, "threshold", opt)
    assert torch.equal(out["mask/a"], _t([0.4, 0.6]))
    _close(out["head/h"], [2.0])  # first momentum step: m = Δ = 1
    assert set(state) == {"opt_m/head/h"}


def test_scaling_adam_state_is_carried_from_the_previous_global():
    # Prepare: two rounds of adam on one scaling vector, the second reading the first's state
    opt = ServerOptimizer("adam", lr=0.1, beta1=0.5, beta2=0.5, tau=0.0)
    prev = {"scale/a": _t([1.0, 1.0])}
    out1, state1 = server_opt.server_step({"scale/a": _t([3.0, 0.0])}, prev, "scaling", opt)
    # Execute
    prev2 = {"scale/a": out1["scale/a"], **state1}
    out2, state2 = server_opt.server_step({"scale/a": _t([1.1, 0.9])}, prev2, "scaling", opt)
    # Assert: round 1 Δ = [2, -1]: m = [1, -.5], v = [2, .5], step = .1 * m / sqrt(v)
    _close(state1["opt_m/scale/a"], [1.0, -0.5])
    _close(state1["opt_v/scale/a"], [2.0, 0.5])
    x1 = [1.0 + 0.1 / math.sqrt(2.0), 1.0 - 0.05 / math.sqrt(0.5)]
    _close(out1["scale/a"], x1, tol=1e-6)
    # round 2 Δ = [1.1, 0.9] - x1, m and v continue from round 1
    d = [1.1 - x1[0], 0.9 - x1[1]]
    m = [0.5 * 1.0 + 0.5 * d[0], 0.5 * -0.5 + 0.5 * d[1]]
    v = [0.5 * 2.0 + 0.5 * d[0] ** 2, 0.5 * 0.5 + 0.5 * d[1] ** 2]
    _close(state2["opt_m/scale/a"], m, tol=1e-6)
    _close(state2["opt_v/scale/a"], v, tol=1e-6)
    _close(out2["scale/a"], [x1[i] + 0.1 * m[i] / math.sqrt(v[i]) for i in range(2)], tol=1e-6)


def test_aggregate_stacked_returns_finalized_globals_and_state():
    clients = [{"mask/a": torch.tensor([True, True]), "head/h": _t([1.0])}, {"mask/a": torch.tensor([True, False]), "head/h": _t([4.0])}]
    previous = {"probs/a": _t([0.5, 0.5]), "head/h": _t([0.0])}
    out = aggregate_stacked(clients, [1.0, 3.0], "bernoulli", previous=previous, server=ServerOptimizer("adam", lr=0.1))
    assert set(out) == {"probs/a", "head/h", "opt_m/probs/a", "opt_v/probs/a", "opt_m/head/h", "opt_v/head/h"}
    # weighted means [1, 0.25]: one rises, one falls, by about lr in score space (first adam step)
    assert out["probs/a"][0] > 0.5 > out["probs/a"][1]
    _close(out["head/h"], [0.1 * 0.1 * 3.25 / (0.1 * 3.25 + 1e-3)], tol=1e-6)


# --------------------------------------------------------------------------- bayes


def test_beta_posterior_hand_computed():
    # Prepare: 4 clients, mean mask [0.75, 0.25, 0.5] -> M = [3, 1, 2]; prior α = [1, 2, 1], β = [1, 1, 3]
    mean = _t([0.75, 0.25, 0.5])
    # Execute
    probs, alpha, beta = agg.beta_posterior(mean, 4, _d([1.0, 2.0, 1.0]), _d([1.0, 1.0, 3.0]))
    # Assert: α' = [4, 3, 3], β' = [2, 4, 5]; mode (α'-1)/(α'+β'-2) = [3/4, 2/5, 2/6]
    _close(alpha, [4.0, 3.0, 3.0])
    _close(beta, [2.0, 4.0, 5.0])
    _close(probs, [0.75, 0.4, 2 / 6])


def test_bayes_with_a_fresh_uniform_prior_is_the_mean():
    probs, _, _ = agg.beta_posterior(_t([0.3, 1.0]), 10, _d([1.0, 1.0]), _d([1.0, 1.0]))
    _close(probs, [0.3, 1.0])


def test_bayes_step_continues_or_resets_the_posterior():
    reduced = {"mask/a": _t([1.0, 0.5]), "head/h": _t([2.0])}
    previous = {"probs/a": _t([0.5, 0.5]), "beta_a/probs/a": _t([3.0, 1.0]), "beta_b/probs/a": _t([1.0, 5.0])}
    out, state = agg.bayes_step(reduced, previous, "bernoulli", count=2, prior=1.0, reset=False)
    # α' = [5, 2], β' = [1, 6]; mode = [4/4, 1/6]
    _close(out["mask/a"], [1.0, 1 / 6])
    _close(state["beta_a/probs/a"], [5.0, 2.0])
    _close(state["beta_b/probs/a"], [1.0, 6.0])
    assert out["head/h"] is reduced["head/h"]  # heads keep the weighted mean
    fresh, state = agg.bayes_step(reduced, previous, "bernoulli", count=2, prior=2.0, reset=True)
    # reset to Beta(2, 2): α' = [4, 3], β' = [2, 3]; mode = [3/4, 2/4]
    _close(fresh["mask/a"], [0.75, 0.5])
    _close(state["beta_a/probs/a"], [4.0, 3.0])


def test_finish_with_bayes_clamps_and_writes_posterior_state():
    reduced = {"mask/a": _t([1.0, 0.0])}
    out = agg.finish(reduced, {"probs/a": _t([0.9, 0.9])}, "bernoulli", server=ServerOptimizer(), bayes=(3, 1.0, True))
    _close(out["probs/a"], [1 - PROB_EPS, PROB_EPS])
    _close(out["beta_a/probs/a"], [4.0, 1.0])
    _close(out["beta_b/probs/a"], [1.0, 4.0])
    assert agg.reduce("bayes", _t([[1.0], [0.0]]), _d([3, 1])).item() == 0.75  # weighted mean first
