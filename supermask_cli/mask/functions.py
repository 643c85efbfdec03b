"""Mask maths: tiny pure functions and the straight-through estimators.

Gradient estimators (a named choice per kind, see README "Mask kinds"):
- ``bernoulli``: m ~ Bernoulli(sigmoid(scores)); backward passes dL/dm through sigmoid,
  i.e. dL/dscores = dL/dm * sigmoid'(scores)  (FedPM, Isik et al. 2023).
- ``threshold``: m = scores >= tau; backward is the identity, dL/dscores = dL/dm
  (Zhao et al. 2020; Mallya et al. 2018, "Piggyback").

``sample_bernoulli_mask`` / ``threshold_mask`` are the reference estimators on the mask alone.
Training uses ``bernoulli_masked_weight`` / ``threshold_masked_weight``: one autograd node that
returns W_eff = W * m and, in backward, dL/dscores = (dL/dW_eff * W) * sigmoid'(scores) (resp.
dL/dW_eff * W). Same sample (same random stream), same values and the same floating-point
operations as ``W * mask(scores)`` built from the reference, with fewer full-size passes and
temporaries: no float mask kept for backward, the cast and the sigmoid' scaling fused.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

# Global bernoulli probabilities are clamped into [PROB_EPS, 1 - PROB_EPS] after aggregation so
# that next round's scores = logit(probs) stay finite and every weight can still move.
PROB_EPS = 1e-3

BERNOULLI_ESTIMATOR = "sigmoid-scaled"
THRESHOLD_ESTIMATOR = "identity"


def _sigmoid_scaled(grad: torch.Tensor, probs: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """``grad * sigmoid'(scores)`` given ``probs = sigmoid(scores)``: grad * (1 - probs) * probs in one pass."""
    if inplace:
        return torch.ops.aten.sigmoid_backward.grad_input(grad, probs, grad_input=grad)
    return torch.ops.aten.sigmoid_backward(grad, probs)


class _BernoulliSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        probs = torch.sigmoid(scores)
        ctx.save_for_backward(probs)
        return torch.bernoulli(probs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (probs,) = ctx.saved_tensors
        return _sigmoid_scaled(grad, probs)


class _ThresholdSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, tau: float) -> torch.Tensor:  # type: ignore[override]
        return (scores >= tau).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


class _BernoulliMaskedWeight(torch.autograd.Function):
    """W_eff = W * m, m ~ Bernoulli(sigmoid(scores)); sigmoid-scaled STE for scores, W frozen.
    Backward recomputes the probs from the scores rather than keeping a float copy per layer alive
    between forward and backward (one weight-sized tensor per target layer of peak memory)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, scores: torch.Tensor, private_grad: bool) -> torch.Tensor:  # type: ignore[override]
        mask = torch.bernoulli(torch.sigmoid(scores))
        ctx.save_for_backward(weight, scores)
        ctx.private_grad = private_grad
        if mask.dtype == weight.dtype:
            return mask.mul_(weight)  # weight * mask, written over the mask (no longer needed)
        return weight * mask.to(weight.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:  # type: ignore[override]
        weight, scores = ctx.saved_tensors
        grad_mask = _times_weight(grad, weight, ctx.private_grad).to(scores.dtype)  # fresh, or ours to overwrite
        return None, _sigmoid_scaled(grad_mask, torch.sigmoid(scores), inplace=True), None


class _ThresholdMaskedWeight(torch.autograd.Function):
    """W_eff = W * [scores >= tau]; identity STE for scores, W frozen."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, scores: torch.Tensor, tau: float, private_grad: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(weight)
        ctx.scores_dtype = scores.dtype
        ctx.private_grad = private_grad
        # Same values as weight * mask.float(): kept weights unchanged, dropped ones 0 (sign of zero aside).
        return torch.where(scores >= tau, weight, 0.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor, None, None]:  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        return None, _times_weight(grad, weight, ctx.private_grad).to(ctx.scores_dtype), None, None


def _times_weight(grad: torch.Tensor, weight: torch.Tensor, private_grad: bool) -> torch.Tensor:
    """dL/dm = dL/dW_eff * W; in place when the incoming gradient is known to be nobody else's."""
    if private_grad and grad.is_contiguous() and grad.dtype == weight.dtype and grad.shape == weight.shape:
        return grad.mul_(weight)
    return grad * weight


def bernoulli_masked_weight(weight: torch.Tensor, scores: torch.Tensor, *, private_grad: bool = False) -> torch.Tensor:
    """``weight * sample_bernoulli_mask(scores)`` as one autograd node (same sample, values and gradients).

    ``private_grad``: the result only feeds a matmul (as in ``MaskedLinear``), so the gradient that
    reaches it is a fresh tensor nobody else holds and may be overwritten (one allocation less)."""
    return _BernoulliMaskedWeight.apply(weight, scores, private_grad)


def threshold_masked_weight(weight: torch.Tensor, scores: torch.Tensor, tau: float, *, private_grad: bool = False) -> torch.Tensor:
    """``weight * threshold_mask(scores, tau)`` as one autograd node (same values and gradients);
    ``private_grad`` as in ``bernoulli_masked_weight``."""
    return _ThresholdMaskedWeight.apply(weight, scores, tau, private_grad)


@functools.cache
def compiled_masked_weight(kind: str) -> Callable[..., torch.Tensor]:
    """``bernoulli_masked_weight`` / ``threshold_masked_weight`` under ``torch.compile``
    (``train.compile``): the sampling or comparison, W * m and the STE backward each become one
    fused kernel instead of three passes over weight-sized tensors. Same estimator and gradients;
    a compiled bernoulli mask draws its sample from inductor's random stream (same distribution,
    other bits than eager). Compiled once per weight shape; the first step pays for it."""
    eager = {"bernoulli": bernoulli_masked_weight, "threshold": threshold_masked_weight}[kind]
    return torch.compile(eager, dynamic=False)


def sample_bernoulli_mask(scores: torch.Tensor) -> torch.Tensor:
    """A 0/1 mask sampled from sigmoid(scores), differentiable w.r.t. scores (sigmoid-scaled STE)."""
    return _BernoulliSTE.apply(scores)


def threshold_mask(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """The 0/1 mask ``scores >= tau``, differentiable w.r.t. scores (identity STE)."""
    return _ThresholdSTE.apply(scores, tau)


def clamp_probs(probs: torch.Tensor) -> torch.Tensor:
    """Clamp global probabilities into [PROB_EPS, 1 - PROB_EPS]."""
    return probs.clamp(PROB_EPS, 1.0 - PROB_EPS)


def scores_from_probs(probs: torch.Tensor) -> torch.Tensor:
    """Bernoulli scores whose sigmoid is ``probs`` (clamped, so always finite)."""
    return torch.logit(clamp_probs(probs.float()))


def scores_from_mask(mask: torch.Tensor, tau: float, init_score: float) -> torch.Tensor:
    """Threshold scores reproducing ``mask``: ``init_score`` where kept, mirrored below tau where not."""
    keep = torch.tensor(init_score, dtype=torch.float32)
    drop = torch.tensor(2.0 * tau - init_score, dtype=torch.float32)
    return torch.where(mask.bool(), keep, drop)


def density(mask: torch.Tensor) -> float:
    """Fraction of ones (kept weights) in a mask, or the mean of probabilities."""
    return float(mask.float().mean()) if mask.numel() else 0.0
