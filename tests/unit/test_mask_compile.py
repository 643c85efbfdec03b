"""``train.compile``: the masked weights under torch.compile keep the estimators and gradients."""

from __future__ import annotations

import pytest
import torch

from supermask_cli import checkpoint, steps
from supermask_cli.config import load_config
from supermask_cli.layout import Layout
from supermask_cli.mask import functions as fn


def _weight_and_scores(rows: int, cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g), torch.randn(rows, cols, generator=g)


def _forward_backward(f, weight, scores, upstream, *args):
    scores = scores.clone().requires_grad_()
    out = f(weight, scores, *args, private_grad=True)
    out.backward(upstream.clone())  # a private gradient may be overwritten: give each call its own
    return out.detach(), scores.grad


def test_compiled_threshold_weight_equals_eager_bit_for_bit():
    weight, scores = _weight_and_scores(24, 16, seed=1)
    scores.view(-1)[::5] = 0.1  # ties at tau are kept
    upstream = torch.randn(24, 16, generator=torch.Generator().manual_seed(2))

    eager = _forward_backward(fn.threshold_masked_weight, weight, scores, upstream, 0.1)
    compiled = _forward_backward(fn.compiled_masked_weight("threshold"), weight, scores, upstream, 0.1)

    assert torch.equal(compiled[0], eager[0])  # W where scores >= tau, else 0
    assert torch.equal(compiled[1], eager[1])  # identity STE: upstream * W


def test_compiled_bernoulli_weight_samples_its_probs_and_scales_the_gradient():
    weight, _ = _weight_and_scores(300, 60, seed=3)
    probs = torch.tensor([0.1, 0.5, 0.9]).repeat_interleave(20).expand(300, 60).contiguous()
    scores = torch.logit(probs)
    upstream = torch.randn(300, 60, generator=torch.Generator().manual_seed(4))
    f = fn.compiled_masked_weight("bernoulli")

    torch.manual_seed(5)
    out, grad = _forward_backward(f, weight, scores, upstream)
    again, _ = _forward_backward(f, weight, scores, upstream)

    kept = out != 0
    assert torch.equal(out[kept], weight[kept])  # every entry is W or 0
    for block, p in zip(range(3), (0.1, 0.5, 0.9)):
        density = kept[:, block * 20 : (block + 1) * 20].float().mean().item()
        assert abs(density - p) < 5 * (p * (1 - p) / 6000) ** 0.5  # 6,000 draws per block
    assert not torch.equal(again, out)  # a fresh sample every step
    torch.testing.assert_close(grad, upstream * weight * probs * (1 - probs), rtol=1e-5, atol=1e-7)
    torch.manual_seed(5)
    assert torch.equal(_forward_backward(f, weight, scores, upstream)[0], out)  # reproducible under the seed


@pytest.mark.parametrize("kind", ["bernoulli", "threshold"])
def test_train_compile_routes_every_training_forward_through_the_compiled_weights(tiny_config, tmp_path, monkeypatch, kind):
    calls = {"compiled": 0}

    def counting(which):  # the wiring, without paying for compilation on the tiny model
        eager = fn.bernoulli_masked_weight if which == "bernoulli" else fn.threshold_masked_weight

        def call(*args, **kwargs):
            calls["compiled"] += 1
            return eager(*args, **kwargs)

        return call

    monkeypatch.setattr(fn, "compiled_masked_weight", counting)
    for compile_on in (False, True):
        calls["compiled"] = 0
        run_dir = str(tmp_path / f"compile_{compile_on}")
        cfg = load_config(tiny_config(kind, run_dir=run_dir, train={"compile": compile_on}, federation={"num_clients": 1, "rounds": 1}))
        steps.init(cfg)
        result = steps.train_client(cfg, 0, rnd=0, force=True)
        layers = len(checkpoint.read_meta(Layout(cfg.run_dir).global_path(0)).targets)
        assert calls["compiled"] == (layers * result.steps if compile_on else 0)
        steps.run(cfg)  # the rest of the run (eval, aggregate) works with compiled training
