"""The wrapping layer: a frozen linear (``nn.Linear`` or GPT-2's ``Conv1D``) with a trainable mask.

What the layer trains and how it computes its output is its kind's (``kinds``)."""

from __future__ import annotations

import torch
from torch import nn

from .kinds import kind_of
from .linear import is_conv1d, linear_forward, out_features  # noqa: F401  (part of this module's API)


class MaskedLinear(nn.Module):
    """W_eff = W * m (``bernoulli``, ``threshold``) or y = (Wx + b) * v (``scaling``); W stays frozen."""

    def __init__(self, base: nn.Module, kind: str, tau: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.kind = kind
        self.spec = kind_of(kind)
        self.tau = tau
        self.compiled = False  # train.compile: the training-time masked weight via torch.compile
        for p in base.parameters():
            p.requires_grad_(False)
        self.spec.init_params(self, base)

    def current_mask(self) -> torch.Tensor:
        """The mask the forward pass uses now: sampled (training) or expected (eval) for bernoulli."""
        return self.spec.current_mask(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spec.forward(self, x)

    def masked_weight(self) -> torch.Tensor:
        """W * current_mask(), as one autograd node for the hard masks (see ``functions``)."""
        return self.spec.masked_weight(self)


def bake(module: nn.Module, kind: str, value: torch.Tensor) -> None:
    """Fold a mask (or mask probabilities, or a scaling vector) into ``module``'s frozen weights in place."""
    kind_of(kind).bake(module, value)
