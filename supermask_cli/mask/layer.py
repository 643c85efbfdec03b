"""The wrapping layer: a frozen linear (``nn.Linear`` or GPT-2's ``Conv1D``) with a trainable mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import functions as fn


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2 style ``Conv1D``: weight stored as (in_features, out_features)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def out_features(module: nn.Module) -> int:
    """Output width of a linear-like module."""
    return module.weight.shape[1] if is_conv1d(module) else module.weight.shape[0]


def linear_forward(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``module``'s forward with ``weight`` in place of its own."""
    if is_conv1d(module):
        size_out = x.shape[:-1] + (weight.shape[1],)
        return torch.addmm(module.bias, x.reshape(-1, x.shape[-1]), weight).view(size_out)
    return F.linear(x, weight, module.bias)


class MaskedLinear(nn.Module):
    """W_eff = W * m (``bernoulli``, ``threshold``) or y = (Wx + b) * v (``scaling``); W stays frozen."""

    def __init__(self, base: nn.Module, kind: str, tau: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.kind = kind
        self.tau = tau
        self.compiled = False  # train.compile: the training-time masked weight via torch.compile
        for p in base.parameters():
            p.requires_grad_(False)
        if kind == "scaling":
            self.scale = nn.Parameter(torch.ones(out_features(base), device=base.weight.device))
        else:
            self.scores = nn.Parameter(torch.zeros_like(base.weight, dtype=torch.float32))

    def current_mask(self) -> torch.Tensor:
        """The mask the forward pass uses now: sampled (training) or expected (eval) for bernoulli."""
        if self.kind == "bernoulli":
            return fn.sample_bernoulli_mask(self.scores) if self.training else torch.sigmoid(self.scores)
        return fn.threshold_mask(self.scores, self.tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "scaling":
            return linear_forward(self.base, x, self.base.weight) * self.scale.to(x.dtype)
        return linear_forward(self.base, x, self.masked_weight())

    def masked_weight(self) -> torch.Tensor:
        """W * current_mask(), as one autograd node for the hard masks (see ``functions``)."""
        if self.kind == "bernoulli" and not self.training:
            return self.base.weight * torch.sigmoid(self.scores).to(self.base.weight.dtype)
        # The masked weight only feeds linear_forward's matmul: its gradient is private to us.
        if self.kind == "bernoulli":
            f = fn.compiled_masked_weight("bernoulli") if self.compiled else fn.bernoulli_masked_weight
            return f(self.base.weight, self.scores, private_grad=True)
        f = fn.compiled_masked_weight("threshold") if self.compiled else fn.threshold_masked_weight
        return f(self.base.weight, self.scores, self.tau, private_grad=True)


def bake(module: nn.Module, kind: str, value: torch.Tensor) -> None:
    """Fold a mask (or mask probabilities, or a scaling vector) into ``module``'s frozen weights in place."""
    with torch.no_grad():
        if kind == "scaling":
            v = value.to(device=module.weight.device, dtype=module.weight.dtype)
            if is_conv1d(module):
                module.weight.mul_(v.unsqueeze(0))
            else:
                module.weight.mul_(v.unsqueeze(1))
            if module.bias is not None:
                module.bias.mul_(v)
        else:
            module.weight.mul_(value.to(device=module.weight.device, dtype=module.weight.dtype))
