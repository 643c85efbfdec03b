"""Linear-like modules (``nn.Linear`` and GPT-2's ``Conv1D``): their shape and forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
