"""Tests for the mask maths, the MaskedLinear layer, target matching and masked models on the tiny BERT."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from conftest import seeded_base
from supermask_cli import steps
from supermask_cli.checkpoint import load_checkpoint
from supermask_cli.config import load_config
from supermask_cli.errors import SupermaskError
from supermask_cli.mask import functions as fn
from supermask_cli.mask.inject import DEFAULT_TARGETS, match_targets
from supermask_cli.mask.layer import MaskedLinear, bake
from supermask_cli.masked_model import trainable_from_global
from supermask_cli.model import load_base_model

# --------------------------------------------------------------------------- mask functions


def test_threshold_mask_forward_keeps_ties_and_above():
    # Prepare
    scores = torch.tensor([[-1.0, 0.0, 0.00999], [0.01, 0.02, 5.0]])
    # Execute
    mask = fn.threshold_mask(scores, 0.01)
    # Assert: >= tau kept (the tie 0.01 included), below dropped
    assert torch.equal(mask, torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    assert mask.dtype == scores.dtype


def test_threshold_mask_gradient_is_identity():
    # Prepare
    scores = torch.tensor([[-1.0, 0.5], [2.0, 0.0]], requires_grad=True)
    c = torch.tensor([[3.0, -2.0], [0.25, 7.0]])
    # Execute
    (fn.threshold_mask(scores, 0.5) * c).sum().backward()
    # Assert: identity STE, even where the mask is 0
    assert torch.equal(scores.grad, c)


def test_bernoulli_mask_gradient_is_sigmoid_scaled():
    # Prepare: sigmoid(0) = 0.5 -> p(1-p) = 0.25
    scores = torch.zeros(2, 3, requires_grad=True)
    c = torch.tensor([[1.0, -2.0, 4.0], [0.5, 8.0, -1.0]])
    # Execute
    (fn.sample_bernoulli_mask(scores) * c).sum().backward()
    # Assert
    assert torch.equal(scores.grad, c * 0.25)


def test_bernoulli_mask_gradient_matches_p_one_minus_p_at_other_scores():
    scores = torch.tensor([math.log(3.0), -math.log(3.0)], requires_grad=True)  # sigmoid = 0.75, 0.25
    (fn.sample_bernoulli_mask(scores) * torch.tensor([2.0, 4.0])).sum().backward()
    torch.testing.assert_close(scores.grad, torch.tensor([2.0 * 0.1875, 4.0 * 0.1875]))


def test_bernoulli_mask_forward_saturated_scores_is_deterministic():
    scores = torch.tensor([[30.0, -30.0, 30.0], [-30.0, -30.0, 30.0]])
    for _ in range(5):
        assert torch.equal(fn.sample_bernoulli_mask(scores), torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))


def test_clamp_probs_and_scores_from_probs_exact():
    # Prepare
    probs = torch.tensor([0.0, 1e-4, 0.5, 0.9999, 1.0])
    eps = fn.PROB_EPS
    # Execute
    clamped = fn.clamp_probs(probs)
    scores = fn.scores_from_probs(probs)
    # Assert
    assert eps == 1e-3
    assert torch.equal(clamped, torch.tensor([eps, eps, 0.5, 1 - eps, 1 - eps]))
    assert torch.isfinite(scores).all()
    assert torch.equal(scores, torch.logit(torch.tensor([eps, eps, 0.5, 1 - eps, 1 - eps])))
    assert scores[2].item() == 0.0
    torch.testing.assert_close(torch.sigmoid(scores), clamped)


def test_scores_from_mask_and_back():
    # Prepare
    mask = torch.tensor([[True, False, True], [False, False, True]])
    tau, init = 0.01, 0.02
    # Execute
    scores = fn.scores_from_mask(mask, tau, init)
    # Assert: init where kept, 2*tau - init (= 0.0) where dropped
    expected = torch.where(mask, torch.tensor(init), torch.tensor(2 * tau - init))
    assert scores.dtype == torch.float32
    assert torch.equal(scores, expected)
    assert torch.equal(fn.threshold_mask(scores, tau).bool(), mask)
    assert torch.equal(fn.scores_from_mask(mask.float(), 0.5, 2.0), torch.where(mask, 2.0, -1.0))


def test_density():
    assert fn.density(torch.tensor([1, 0, 1, 1])) == 0.75
    assert fn.density(torch.tensor([0.2, 0.4])) == pytest.approx(0.3)
    assert fn.density(torch.tensor([])) == 0.0


# --------------------------------------------------------------------------- MaskedLinear


def _linear() -> nn.Module:
    return seeded_base("linear", 5, 3, seed=1)


def _conv1d() -> nn.Module:
    return seeded_base("conv1d", 5, 3, seed=2)


BASES = {"linear": _linear, "conv1d": _conv1d}


def _x() -> torch.Tensor:
    return torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("base_kind", sorted(BASES))
def test_fresh_threshold_layer_reproduces_base(base_kind):
    # Prepare
    base = BASES[base_kind]()
    x = _x()
    expected = base(x)
    layer = MaskedLinear(base, "threshold", tau=0.01)
    # Execute
    with torch.no_grad():
        layer.scores.fill_(0.02)
    out = layer(x)
    # Assert
    assert out.shape == (2, 4, 3)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("base_kind", sorted(BASES))
def test_fresh_scaling_layer_reproduces_base(base_kind):
    base = BASES[base_kind]()
    x = _x()
    expected = base(x)
    layer = MaskedLinear(base, "scaling")
    assert torch.equal(layer.scale, torch.ones(3))
    assert torch.equal(layer(x), expected)


def _randomised(layer: MaskedLinear) -> MaskedLinear:
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        if layer.kind == "scaling":
            layer.scale.copy_(torch.randn(layer.scale.shape, generator=g))
        else:
            layer.scores.copy_(torch.randn(layer.scores.shape, generator=g))
    return layer.eval()


@pytest.mark.parametrize("base_kind", sorted(BASES))
@pytest.mark.parametrize("kind", ["bernoulli", "threshold", "scaling"])
def test_bake_reproduces_masked_eval_output(base_kind, kind):
    # Prepare
    base = BASES[base_kind]()
    layer = _randomised(MaskedLinear(base, kind, tau=0.0))
    x = _x()
    with torch.no_grad():
        expected = layer(x)
        value = layer.scale.detach() if kind == "scaling" else layer.current_mask().detach()
    plain = BASES[base_kind]()  # a fresh, identical base layer
    # Execute
    bake(plain, kind, value)
    # Assert
    with torch.no_grad():
        torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-6)


def test_bake_scaling_conv1d_orientation():
    # Conv1D weight is (in, out): scaling multiplies columns, not rows.
    base = _conv1d()
    w, b = base.weight.detach().clone(), base.bias.detach().clone()
    v = torch.tensor([2.0, 3.0, -1.0])
    bake(base, "scaling", v)
    assert torch.equal(base.weight, w * v.unsqueeze(0))
    assert torch.equal(base.bias, b * v)
    lin = _linear()
    w2 = lin.weight.detach().clone()
    bake(lin, "scaling", v)
    assert torch.equal(lin.weight, w2 * v.unsqueeze(1))


def test_bernoulli_eval_uses_expected_mask():
    base = _linear()
    layer = MaskedLinear(base, "bernoulli").eval()
    x = _x()
    # scores 0 -> probs 0.5 -> W * 0.5
    torch.testing.assert_close(layer(x), nn.functional.linear(x, base.weight * 0.5, base.bias))


@pytest.mark.parametrize("base_kind", sorted(BASES))
@pytest.mark.parametrize("kind", ["bernoulli", "threshold", "scaling"])
def test_only_mask_parameters_get_gradient(base_kind, kind):
    # Prepare
    layer = MaskedLinear(BASES[base_kind](), kind, tau=0.0)
    if kind == "threshold":
        with torch.no_grad():
            layer.scores.fill_(0.02)
    # Execute
    layer(_x()).pow(2).sum().backward()
    # Assert
    assert not layer.base.weight.requires_grad and layer.base.weight.grad is None
    assert not layer.base.bias.requires_grad and layer.base.bias.grad is None
    trainable = [n for n, p in layer.named_parameters() if p.requires_grad]
    assert trainable == (["scale"] if kind == "scaling" else ["scores"])
    param = layer.scale if kind == "scaling" else layer.scores
    assert param.grad is not None and param.grad.shape == param.shape
    assert param.grad.abs().sum() > 0


# --------------------------------------------------------------------------- match_targets

NAMES = [
    "bert.encoder.layer.0.attention.self.query",
    "bert.encoder.layer.0.attention.self.key",
    "bert.encoder.layer.0.attention.self.myquery",
    "bert.encoder.layer.1.attention.self.query",
    "bert.pooler.dense",
    "query",
]


def test_regex_is_full_match():
    matched, counts = match_targets(NAMES, r".*\.query")
    assert matched == [NAMES[0], NAMES[3]]
    assert counts == {r".*\.query": 2}
    with pytest.raises(SupermaskError, match=re.escape("'query'")):
        match_targets(NAMES[:5], "query")  # a partial regex matches nothing under full-match
    assert match_targets(NAMES, "query") == (["query"], {"query": 1})


def test_list_entries_exact_or_dotted_suffix():
    matched, counts = match_targets(NAMES, ["query", "pooler.dense"])
    assert matched == [NAMES[0], NAMES[3], "bert.pooler.dense", "query"]
    assert "bert.encoder.layer.0.attention.self.myquery" not in matched
    assert counts == {"query": 3, "pooler.dense": 1}
    assert match_targets(NAMES, ["bert.pooler.dense"]) == (["bert.pooler.dense"], {"bert.pooler.dense": 1})


def test_matches_kept_in_model_order_and_counted_per_pattern():
    matched, counts = match_targets(NAMES, ["pooler.dense", "key", "query"])
    assert matched == [NAMES[0], NAMES[1], NAMES[3], "bert.pooler.dense", "query"]
    assert counts == {"pooler.dense": 1, "key": 1, "query": 3}


def test_pattern_matching_nothing_is_named():
    with pytest.raises(SupermaskError) as info:
        match_targets(NAMES, ["query", "nomatch"])
    assert "'nomatch'" in str(info.value)
    with pytest.raises(SupermaskError, match="'lin_q'"):
        match_targets(NAMES, r"lin_q")
    with pytest.raises(SupermaskError, match="empty list"):
        match_targets(NAMES, [])


def test_invalid_regex_message():
    with pytest.raises(SupermaskError) as info:
        match_targets(NAMES, r"bert.(query")
    assert "invalid regex 'bert.(query'" in str(info.value)
    assert "mask.target_modules" in str(info.value)


def test_default_bert_regex():
    names = [
        "bert.encoder.layer.0.attention.self.query",
        "bert.encoder.layer.0.attention.output.dense",
        "bert.encoder.layer.0.intermediate.dense",
        "bert.encoder.layer.0.output.dense",
        "bert.pooler.dense",
        "classifier",
    ]
    matched, _ = match_targets(names, DEFAULT_TARGETS["bert"])
    assert matched == names[:5]


# --------------------------------------------------------------------------- masked tiny model


def _load(cfg, labels=("negative", "positive")):
    return load_base_model(
        cfg.model.name, revision=None, num_labels=len(labels), regression=False,
        target_patterns=cfg.mask.target_modules, head_names=None, seed=cfg.seed,
    )


def _batch(base):
    return base.tokenizer(
        ["good movie", "the plot was awful and boring", "a film"], padding=True, return_tensors="pt"
    )


@pytest.fixture(scope="module")
def tiny_globals(tmp_path_factory, tiny_model, tiny_data):
    """kind -> (config, global checkpoint) made by steps.init on the tiny config."""
    from conftest import tiny_config_dict
    import yaml

    out = {}
    root = tmp_path_factory.mktemp("mask_globals")
    for kind in ("threshold", "scaling", "bernoulli"):
        path = root / f"{kind}.yaml"
        path.write_text(yaml.safe_dump(tiny_config_dict(root / f"run_{kind}", tiny_model, tiny_data, kind)))
        result, cfg = steps.init(load_config(path))
        out[kind] = (cfg, load_checkpoint(result.path))
    return out


@pytest.mark.parametrize("kind", ["threshold", "scaling"])
def test_masked_model_from_fresh_global_equals_base(tiny_globals, kind):
    # Prepare
    cfg, gl = tiny_globals[kind]
    plain = _load(cfg)
    with torch.no_grad():
        expected = plain.model(**_batch(plain)).logits
    masked = _load(cfg)
    # Execute
    layers, head_params = trainable_from_global(masked, gl, tau=cfg.mask.threshold, init_score=cfg.mask.init_score)
    masked.model.eval()
    with torch.no_grad():
        logits = masked.model(**_batch(masked)).logits
    # Assert
    assert sorted(layers) == sorted(masked.targets)
    assert all(isinstance(masked.model.get_submodule(n), MaskedLinear) for n in masked.targets)
    assert {id(p) for p in head_params} == {id(p) for p in masked.model.classifier.parameters()}
    assert logits.shape == (3, 2)
    assert torch.equal(logits, expected)


def test_bernoulli_global_starts_from_init_density(tiny_globals):
    cfg, gl = tiny_globals["bernoulli"]
    masked = _load(cfg)
    layers, _ = trainable_from_global(masked, gl, tau=cfg.mask.threshold, init_score=cfg.mask.init_score)
    for layer in layers.values():
        torch.testing.assert_close(torch.sigmoid(layer.scores), torch.full_like(layer.scores, 0.99))


def test_default_targets_and_head_of_tiny_bert(tiny_globals):
    cfg, _ = tiny_globals["threshold"]
    base = _load(cfg)
    assert len(base.targets) == 13
    per_layer = ["attention.self.query", "attention.self.key", "attention.self.value",
                 "attention.output.dense", "intermediate.dense", "output.dense"]
    expected = [f"bert.encoder.layer.{i}.{s}" for i in range(2) for s in per_layer] + ["bert.pooler.dense"]
    assert base.targets == expected
    assert base.heads == ["classifier"]
    assert sum(base.target_counts.values()) == 13
    assert base.target_shapes()["bert.encoder.layer.0.intermediate.dense"] == [37, 32]


def test_fingerprint_stable_and_sensitive(tiny_globals):
    cfg, gl = tiny_globals["threshold"]
    first, second = _load(cfg), _load(cfg)
    assert first.fingerprint() == second.fingerprint() == gl.meta.base_model.fingerprint
    assert re.fullmatch(r"[0-9a-f]{64}", first.fingerprint())
    with torch.no_grad():
        second.model.get_submodule(second.targets[5]).weight[0, 0] += 1e-3
    assert second.fingerprint() != first.fingerprint()


@pytest.mark.parametrize("kind", ["bernoulli", "threshold", "scaling"])
def test_trainable_tensors_live_on_the_base_weights_device(kind):
    # A model moved to the GPU before injection must get its scores / scaling vectors there too
    # (the "meta" device stands in for CUDA on a CPU-only machine).
    layer = MaskedLinear(nn.Linear(4, 3, device="meta"), kind)
    assert {p.device.type for p in layer.parameters()} == {"meta"}
