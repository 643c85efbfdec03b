"""The fused masked-weight Functions and the training step helpers against their simple references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import seeded_base
from supermask_cli.mask import functions as fn
from supermask_cli.mask.layer import MaskedLinear, linear_forward
from supermask_cli.local_training import clip_grad_norm_, make_optimizer


def _linear() -> nn.Module:
    return seeded_base("linear", 7, 5, seed=11)


def _conv1d() -> nn.Module:
    return seeded_base("conv1d", 7, 5, seed=12)


BASES = {"linear": _linear, "conv1d": _conv1d}


def _layer(base_kind: str, kind: str) -> MaskedLinear:
    layer = MaskedLinear(BASES[base_kind](), kind, tau=0.1)
    with torch.no_grad():  # scores on both sides of tau, and some ties, for threshold
        layer.scores.copy_(torch.randn(layer.scores.shape, generator=torch.Generator().manual_seed(13)))
        layer.scores.view(-1)[::4] = 0.1
    return layer.train()


def _reference_forward(layer: MaskedLinear, x: torch.Tensor) -> torch.Tensor:
    """The unfused layer: W * mask(scores) built from the reference estimators, then the linear."""
    if layer.kind == "bernoulli":
        mask = fn.sample_bernoulli_mask(layer.scores)
    else:
        mask = fn.threshold_mask(layer.scores, layer.tau)
    return linear_forward(layer.base, x, layer.base.weight * mask.to(layer.base.weight.dtype))


def _run(layer: MaskedLinear, forward, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.randn(3, 4, 7, generator=torch.Generator().manual_seed(14), requires_grad=True)
    c = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(15))
    layer.scores.grad = None
    torch.manual_seed(seed)
    out = forward(layer, x)
    (out * c).sum().backward()
    return out.detach(), x.grad, layer.scores.grad.clone()


@pytest.mark.parametrize("base_kind", sorted(BASES))
@pytest.mark.parametrize("kind", ["bernoulli", "threshold"])
def test_fused_layer_matches_reference_exactly(base_kind, kind):
    # Prepare
    layer = _layer(base_kind, kind)
    # Execute: same seed, so the same bernoulli sample
    expected = _run(layer, _reference_forward, seed=21)
    got = _run(layer, lambda m, x: m(x), seed=21)
    # Assert: output, input gradient and score gradient, bit for bit
    for name, a, b in zip(("output", "grad_x", "grad_scores"), got, expected):
        assert torch.equal(a, b), name
    assert layer.base.weight.grad is None and layer.base.bias.grad is None


def test_fused_bernoulli_weight_values_and_gradient():
    # Prepare
    weight = torch.tensor([[2.0, -3.0, 0.5], [1.0, 4.0, -1.5]])
    scores = torch.tensor([[30.0, -30.0, 0.0], [30.0, 30.0, -30.0]], requires_grad=True)
    c = torch.tensor([[1.0, 2.0, -4.0], [0.5, -1.0, 3.0]])
    # Execute
    torch.manual_seed(0)
    w_eff = fn.bernoulli_masked_weight(weight, scores)
    (w_eff * c).sum().backward()
    # Assert: saturated scores give a deterministic mask; gradient = c * W * p(1-p)
    assert torch.equal(w_eff[0, :2], torch.tensor([2.0, 0.0])) and torch.equal(w_eff[1], torch.tensor([1.0, 4.0, 0.0]))
    assert w_eff[0, 2].item() in (0.0, 0.5)
    probs = torch.sigmoid(scores.detach())
    torch.testing.assert_close(scores.grad, c * weight * probs * (1.0 - probs), rtol=1e-6, atol=0.0)
    assert scores.grad[0, 2].item() == (1.0 * -4.0 * 0.5) * 0.25  # sigmoid'(0) = 1/4, exact


def test_fused_threshold_weight_values_and_identity_gradient():
    # Prepare
    weight = torch.tensor([[2.0, -3.0, 0.5], [1.0, 4.0, -1.5]])
    scores = torch.tensor([[0.2, 0.1, 0.0999], [-1.0, 5.0, 0.1]], requires_grad=True)
    c = torch.tensor([[1.0, 2.0, -4.0], [0.5, -1.0, 3.0]])
    # Execute
    w_eff = fn.threshold_masked_weight(weight, scores, 0.1)
    (w_eff * c).sum().backward()
    # Assert: ties kept; identity STE: dL/dscores = dL/dW_eff * W, also where the mask is 0
    assert torch.equal(w_eff, torch.tensor([[2.0, -3.0, 0.0], [0.0, 4.0, -1.5]]))
    assert torch.equal(scores.grad, c * weight)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["bernoulli", "threshold"])
def test_fused_weight_half_precision_base_matches_reference(kind, dtype):
    # Prepare: a half-precision frozen weight, float32 scores
    weight = torch.randn(6, 5, generator=torch.Generator().manual_seed(3)).to(dtype)
    scores = torch.randn(6, 5, generator=torch.Generator().manual_seed(4)).requires_grad_()
    c = torch.randn(6, 5, generator=torch.Generator().manual_seed(5)).to(dtype)
    results = []
    for fused in (False, True):
        scores.grad = None
        torch.manual_seed(7)
        if kind == "bernoulli":
            w = fn.bernoulli_masked_weight(weight, scores) if fused else weight * fn.sample_bernoulli_mask(scores).to(dtype)
        else:
            w = fn.threshold_masked_weight(weight, scores, 0.0) if fused else weight * fn.threshold_mask(scores, 0.0).to(dtype)
        (w * c).sum().backward()
        results.append((w.detach(), scores.grad.clone()))
    # Assert
    (w_ref, g_ref), (w_fused, g_fused) = results
    assert w_fused.dtype == dtype and g_fused.dtype == torch.float32
    assert torch.equal(w_fused, w_ref) and torch.equal(g_fused, g_ref)


@pytest.mark.parametrize("base_kind", sorted(BASES))
def test_fused_bernoulli_deterministic_under_seed(base_kind):
    # Prepare
    layer = _layer(base_kind, "bernoulli")
    # Execute
    first = _run(layer, lambda m, x: m(x), seed=5)
    second = _run(layer, lambda m, x: m(x), seed=5)
    other = _run(layer, lambda m, x: m(x), seed=6)
    # Assert: same seed -> identical masks, outputs and gradients; another seed -> another sample
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("kind", ["bernoulli", "threshold"])
def test_public_functions_leave_the_callers_gradient_alone(kind):
    # Without private_grad the incoming gradient may be someone else's: never written in place.
    weight = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    scores = torch.randn(4, 3, generator=torch.Generator().manual_seed(2)).requires_grad_()
    g = torch.randn(4, 3, generator=torch.Generator().manual_seed(3))
    keep = g.clone()
    w = fn.bernoulli_masked_weight(weight, scores) if kind == "bernoulli" else fn.threshold_masked_weight(weight, scores, 0.0)
    w.backward(g)
    assert torch.equal(g, keep)
    probs = torch.sigmoid(scores.detach())
    expected = torch.ops.aten.sigmoid_backward(g * weight, probs) if kind == "bernoulli" else g * weight
    assert torch.equal(scores.grad, expected)
    # Used twice (the same gradient object reaches both uses): both contributions counted
    scores.grad = None
    torch.manual_seed(0)
    w = fn.bernoulli_masked_weight(weight, scores) if kind == "bernoulli" else fn.threshold_masked_weight(weight, scores, 0.0)
    (w + w).sum().backward()
    ones = torch.ones(4, 3)
    single = torch.ops.aten.sigmoid_backward(ones * weight, probs) if kind == "bernoulli" else ones * weight
    torch.testing.assert_close(scores.grad, 2 * single)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["bernoulli", "threshold"])
@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_fused_layer_matches_reference_on_cuda(kind, amp):
    layer = _layer("linear", kind).cuda()
    x = torch.randn(3, 4, 7, device="cuda", requires_grad=True)
    c = torch.randn(3, 4, 5, device="cuda")
    results = []
    for forward in (_reference_forward, lambda m, x: m(x)):
        layer.scores.grad = None
        x.grad = None
        torch.manual_seed(31)
        with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
            out = forward(layer, x)
        (out.float() * c).sum().backward()
        results.append((out.detach(), x.grad.clone(), layer.scores.grad.clone()))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_fused_bernoulli_samples_the_reference_mask():
    # Same seed: the fused Function draws exactly the mask sample_bernoulli_mask draws.
    scores = torch.randn(64, 48, generator=torch.Generator().manual_seed(8))
    weight = torch.ones(64, 48)
    torch.manual_seed(9)
    mask = fn.sample_bernoulli_mask(scores)
    torch.manual_seed(9)
    w_eff = fn.bernoulli_masked_weight(weight, scores)
    assert torch.equal(w_eff, mask)
    assert 0.2 < float(mask.mean()) < 0.8


def test_eval_and_no_grad_paths_unchanged():
    # Bernoulli eval: W * sigmoid(scores); threshold under no_grad: the hard mask, no graph.
    layer = _layer("linear", "bernoulli").eval()
    x = torch.randn(2, 7)
    expected = nn.functional.linear(x, layer.base.weight * torch.sigmoid(layer.scores), layer.base.bias)
    assert torch.equal(layer(x), expected)
    layer = _layer("conv1d", "threshold")
    with torch.no_grad():
        out = layer(x)
        ref = _reference_forward(layer, x)
    assert not out.requires_grad and torch.equal(out, ref)


# --------------------------------------------------------------------------- step helpers


def _params_with_grads(scale: float) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(17)
    params = [nn.Parameter(torch.randn(5, 4, generator=g)), nn.Parameter(torch.randn(3, generator=g)), nn.Parameter(torch.randn(2))]
    for p in params[:2]:
        p.grad = torch.randn(p.shape, generator=g) * scale
    return params  # the last one has no gradient


@pytest.mark.parametrize("scale", [1e-3, 10.0, float("inf"), float("nan")])
def test_clip_grad_norm_is_torch_bit_for_bit(scale):
    # Prepare
    ours, theirs = _params_with_grads(scale), _params_with_grads(scale)
    # Execute
    clip_grad_norm_(ours, 1.0)
    torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    # Assert
    for a, b in zip(ours, theirs):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            assert torch.equal(a.grad.nan_to_num(), b.grad.nan_to_num())
            assert torch.equal(a.grad.isnan(), b.grad.isnan())


def test_clip_grad_norm_leaves_small_gradients_untouched():
    params = _params_with_grads(1e-3)
    before = [p.grad for p in params[:2]]
    clip_grad_norm_(params, 1.0)
    assert all(p.grad is g for p, g in zip(params, before))  # not even rewritten in place
    clip_grad_norm_([nn.Parameter(torch.zeros(2))], 1.0)  # no gradients at all: nothing to do


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_make_optimizer_steps_like_the_default(cls):
    # Prepare: the same parameters and gradients for the fused and the default optimizer
    fused_params, plain_params = _params_with_grads(1.0)[:2], _params_with_grads(1.0)[:2]
    fused = make_optimizer(cls, fused_params, lr=0.1, weight_decay=0.01)
    plain = cls(plain_params, lr=0.1, weight_decay=0.01)
    # Execute
    for _ in range(3):
        fused.step()
        plain.step()
    # Assert: same maths (rounding aside), deterministic
    for a, b in zip(fused_params, plain_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert fused.defaults.get("fused") in (True, None, False)


def test_make_optimizer_falls_back_when_fused_is_unsupported():
    class NoFused(torch.optim.Adam):
        def __init__(self, params, fused=None, **kwargs):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
            super().__init__(params, **kwargs)

    opt = make_optimizer(NoFused, [nn.Parameter(torch.zeros(2))], lr=0.1)
    assert isinstance(opt, NoFused) and not opt.defaults.get("fused")
