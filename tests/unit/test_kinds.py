"""supermask_cli.mask.kinds: what differs per mask kind, asked by every generic module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from supermask_cli import checkpoint
from supermask_cli.mask.functions import PROB_EPS
from supermask_cli.mask.kinds import KINDS, kind_of
from supermask_cli.mask.layer import MaskedLinear


def test_the_table_names_each_kind_and_refuses_others():
    assert list(KINDS) == ["bernoulli", "threshold", "scaling"]
    with pytest.raises(ValueError, match="unknown mask kind 'dense'"):
        kind_of("dense")


@pytest.mark.parametrize(("kind", "upload", "glob", "binary", "probabilistic"), [
    ("bernoulli", "mask", "probs", True, True),
    ("threshold", "mask", "mask", True, False),
    ("scaling", "scale", "scale", False, False),
])
def test_groups_and_properties(kind, upload, glob, binary, probabilistic):
    spec = kind_of(kind)
    assert (spec.payload, spec.global_group, spec.binary, spec.probabilistic) == (upload, glob, binary, probabilistic)
    assert checkpoint.global_key(f"{upload}/enc.q", kind) == f"{glob}/enc.q"
    assert checkpoint.global_key("head/classifier.weight", kind) == "head/classifier.weight"


def test_encodings_per_kind():
    assert kind_of("bernoulli").global_encoding == "float" and kind_of("threshold").global_encoding == "packed"
    assert kind_of("scaling").upload_encodings == ("float",)
    assert set(kind_of("threshold").upload_encodings) == {"packed", "coded", "sparse", "none"}
    assert kind_of("threshold").coded_with_flip_rate and not kind_of("bernoulli").coded_with_flip_rate


def test_finalize_clamps_probs_and_takes_the_majority_with_ties_kept():
    probs = kind_of("bernoulli").finalize(torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(probs, torch.tensor([PROB_EPS, 0.5, 1 - PROB_EPS]))
    assert kind_of("threshold").finalize(torch.tensor([0.49, 0.5, 0.9])).tolist() == [False, True, True]
    assert torch.equal(kind_of("scaling").finalize(torch.tensor([2.0])), torch.tensor([2.0]))
    assert kind_of("bernoulli").server_steps and not kind_of("threshold").server_steps


@pytest.mark.parametrize("kind", ["bernoulli", "threshold", "scaling"])
def test_round_zero_global_keeps_every_weight(kind):
    torch.manual_seed(0)
    base = nn.Linear(5, 3)
    spec = kind_of(kind)
    value = spec.initial([3, 5], base, init_density=1.0 - PROB_EPS)
    layer = MaskedLinear(base, kind, tau=0.01)
    with torch.no_grad():
        spec.start(layer, value, tau=0.01, init_score=0.02)
    layer.eval()
    x = torch.randn(4, 5)
    keep = 1 - PROB_EPS if kind == "bernoulli" else 1.0  # the expected mask: W * probs, bias untouched
    expected = nn.functional.linear(x, base.weight * keep, base.bias)
    torch.testing.assert_close(layer(x), expected)
    upload = spec.upload(layer, torch.Generator().manual_seed(0))
    if kind == "scaling":
        assert torch.equal(upload, torch.ones(3))
    else:
        assert upload.dtype == torch.bool and upload.shape == (3, 5)


def test_threshold_start_puts_scores_on_the_right_side_of_tau():
    layer = MaskedLinear(nn.Linear(2, 2), "threshold", tau=0.01)
    mask = torch.tensor([[True, False], [False, True]])
    with torch.no_grad():
        kind_of("threshold").start(layer, mask, tau=0.01, init_score=0.02)
    assert torch.equal(kind_of("threshold").upload(layer, torch.Generator()), mask)


def test_bake_scales_rows_and_bias_or_multiplies_the_mask():
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        lin.bias.copy_(torch.tensor([1.0, 1.0]))
    kind_of("scaling").bake(lin, torch.tensor([2.0, 0.5]))
    assert lin.weight.tolist() == [[2.0, 4.0], [1.5, 2.0]] and lin.bias.tolist() == [2.0, 0.5]
    kind_of("threshold").bake(lin, torch.tensor([[True, False], [False, True]]))
    assert lin.weight.tolist() == [[2.0, 0.0], [0.0, 2.0]] and lin.bias.tolist() == [2.0, 0.5]


def test_bernoulli_bake_value_is_the_expectation_or_a_seeded_sample():
    probs = torch.full((50, 50), 0.3)
    spec = kind_of("bernoulli")
    assert spec.bake_value(probs, "expected", torch.Generator()) is probs
    a = spec.bake_value(probs, "sample", torch.Generator().manual_seed(1))
    b = spec.bake_value(probs, "sample", torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and set(a.unique().tolist()) == {0.0, 1.0} and abs(float(a.mean()) - 0.3) < 0.05


def test_surprise_terms():
    g = torch.tensor([True, False, True])
    assert kind_of("threshold").surprise(torch.tensor([True, True, False]), g) == 2.0
    bits = kind_of("bernoulli").surprise(torch.tensor([True, False]), torch.tensor([0.5, 0.5]))
    assert bits == pytest.approx(2.0)  # one bit each at p = 0.5
    assert kind_of("scaling").surprise(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0])) == 4.0
    assert kind_of("scaling").surprise_per_weight(4.0) == 2.0 and kind_of("threshold").surprise_per_weight(4.0) == 4.0


def test_client_level_reference_and_priority():
    assert kind_of("bernoulli").hard_reference(torch.tensor([0.4, 0.5, 0.6])).tolist() == [False, True, True]
    layer = MaskedLinear(nn.Linear(2, 1), "threshold", tau=0.1)
    with torch.no_grad():
        layer.scores.copy_(torch.tensor([[0.4, -0.2]]))
    torch.testing.assert_close(kind_of("threshold").flip_priority(layer, torch.ones(1, 2, dtype=torch.bool)),
                               torch.tensor([[0.3, 0.3]]))
