"""Mask maths: tiny pure functions and the straight-through estimators.

Gradient estimators (a named choice per kind, see README "Mask kinds"):
- ``bernoulli``: m ~ Bernoulli(sigmoid(scores)); backward passes dL/dm through sigmoid,
  i.e. dL/dscores = dL/dm * sigmoid'(scores)  (FedPM, Isik et al. 2023).
- ``threshold``: m = scores >= tau; backward is the identity, dL/dscores = dL/dm
  (Zhao et al. 2020; Mallya et al. 2018, "Piggyback").
"""

from __future__ import annotations

import torch

# Global bernoulli probabilities are clamped into [PROB_EPS, 1 - PROB_EPS] after aggregation so
# that next round's scores = logit(probs) stay finite and every weight can still move.
PROB_EPS = 1e-3

BERNOULLI_ESTIMATOR = "sigmoid-scaled"
THRESHOLD_ESTIMATOR = "identity"


class _BernoulliSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        probs = torch.sigmoid(scores)
        ctx.save_for_backward(probs)
        return torch.bernoulli(probs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (probs,) = ctx.saved_tensors
        return grad * probs * (1.0 - probs)


class _ThresholdSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, tau: float) -> torch.Tensor:  # type: ignore[override]
        return (scores >= tau).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


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
