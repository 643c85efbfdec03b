"""supermask_cli.reducer: the one function from a round's accepted clients to the next global."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import aggregate_stacked, tiny_config_dict

from supermask_cli import reducer
from supermask_cli.config import config_from_dict


def _cfg(kind="bernoulli", **federation):
    raw = tiny_config_dict(Path("/tmp/unused"), Path("/tmp/model"), (Path("/tmp/a"), Path("/tmp/b")), kind)
    raw["federation"].update(federation)
    return config_from_dict(raw, "test")


def _clients(kind, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        if kind == "scaling":
            payload = {"scale/l": 1 + 0.1 * torch.randn(6, generator=g)}
        else:
            payload = {"mask/l": torch.rand(6, 5, generator=g) < 0.7}
        out.append({**payload, "head/w": torch.randn(2, 6, generator=g)})
    return out


def _previous(kind):
    group = {"bernoulli": "probs", "threshold": "mask", "scaling": "scale"}[kind]
    value = {"probs": torch.full((6, 5), 0.5), "mask": torch.ones(6, 5, dtype=torch.bool), "scale": torch.ones(6)}[group]
    return {f"{group}/l": value, "head/w": torch.zeros(2, 6)}


@pytest.mark.parametrize("kind", ["bernoulli", "threshold", "scaling"])
def test_streaming_mean_equals_the_stacked_reduction(kind):
    clients, counts = _clients(kind), [10, 30, 20, 40]
    cfg = _cfg(kind, weighting="examples")
    streamed = reducer.next_global_tensors(clients.__getitem__, counts, _previous(kind), kind, cfg, rule="mean", rnd=0)
    stacked = aggregate_stacked(clients, [float(c) for c in counts], kind, "mean", previous=_previous(kind))
    assert streamed.keys() == stacked.keys()
    for key in streamed:
        torch.testing.assert_close(streamed[key].float(), stacked[key].float(), atol=1e-6, rtol=0)


def test_each_client_is_read_once_in_order_when_streaming():
    clients, seen = _clients("bernoulli"), []

    def load(i):
        seen.append(i)
        return clients[i]

    reducer.next_global_tensors(load, [1, 1, 1, 1], _previous("bernoulli"), "bernoulli", _cfg(), rule="mean", rnd=0)
    assert seen == [0, 1, 2, 3]


def test_weights_come_from_the_counts_through_the_weighting():
    clients = _clients("scaling", n=2)
    prev = _previous("scaling")
    uniform = reducer.next_global_tensors(clients.__getitem__, [1, 99], prev, "scaling", _cfg("scaling", weighting="uniform"),
                                          rule="mean", rnd=0)
    by_examples = reducer.next_global_tensors(clients.__getitem__, [1, 99], prev, "scaling",
                                              _cfg("scaling", weighting="examples"), rule="mean", rnd=0)
    torch.testing.assert_close(uniform["scale/l"], (clients[0]["scale/l"] + clients[1]["scale/l"]) / 2)
    torch.testing.assert_close(by_examples["scale/l"], 0.01 * clients[0]["scale/l"] + 0.99 * clients[1]["scale/l"])


def test_median_takes_the_stacked_path():
    clients = [{"scale/l": torch.tensor([v]), "head/w": torch.zeros(1)} for v in (1.0, 2.0, 100.0)]
    prev = {"scale/l": torch.ones(1), "head/w": torch.zeros(1)}
    out = reducer.next_global_tensors(clients.__getitem__, [1, 1, 1], prev, "scaling", _cfg("scaling", weighting="uniform"),
                                      rule="median", rnd=0)
    assert out["scale/l"].tolist() == [2.0]


def test_a_rejection_in_load_reaches_the_caller():
    def load(i):
        raise reducer.Rejected(i, f"client {i} is bad")

    with pytest.raises(reducer.Rejected) as info:
        reducer.next_global_tensors(load, [1, 1], _previous("threshold"), "threshold", _cfg("threshold"), rule="mean", rnd=0)
    assert info.value.index == 0 and str(info.value) == "client 0 is bad"


def test_client_level_privacy_bounds_each_contribution():
    cfg = _cfg("threshold")
    cfg = cfg.model_copy(update={"privacy": cfg.privacy.model_copy(update={"mode": "client", "noise_multiplier": 0.0,
                                                                          "max_flips": 1})})
    zeros = [{"mask/l": torch.zeros(6, 5, dtype=torch.bool), "head/w": torch.zeros(2, 6)} for _ in range(3)]
    out = reducer.next_global_tensors(zeros.__getitem__, [1, 1, 1], _previous("threshold"), "threshold", cfg,
                                      rule="mean", rnd=0)
    # each client may flip one bit of the all-ones global: the vote keeps at least 30 - 3 ones
    assert int(out["mask/l"].sum()) >= 27
    plain = reducer.next_global_tensors(zeros.__getitem__, [1, 1, 1], _previous("threshold"), "threshold",
                                        _cfg("threshold"), rule="mean", rnd=0)
    assert int(plain["mask/l"].sum()) == 0
