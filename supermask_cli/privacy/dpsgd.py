"""DP-SGD on one client (Abadi et al. 2016), as pure functions plus one step object.

Batches are Poisson samples (each example independently with rate q = batch_size / n, what the
accountant assumes); each example's gradient over every trainable tensor (scores or scaling
vectors, and the head) is clipped to ``max_grad_norm`` in L2; Gaussian noise of std
``noise_multiplier * max_grad_norm`` is added to their sum, which is divided by the expected batch
size q·n. Without noise (``noise_multiplier`` 0) there is no guarantee to keep (ε unbounded):
batches are the ordinary shuffled ones and, with clipping off, the step is the ordinary step.

Noise and Poisson samples come from a generator seeded with 64 secret bits (``secrets``), never
from the run's seed: whoever knows the config could otherwise regenerate the noise and subtract it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .per_example import PerExampleGrads

# Added to a norm before dividing by it (as Opacus does), so a zero gradient is not a 0/0.
NORM_EPS = 1e-6


@dataclass(frozen=True)
class ExamplePrivacy:
    noise_multiplier: float
    max_grad_norm: float | None  # None: no per-example clipping (only without noise)
    sample_rate: float

    @property
    def poisson(self) -> bool:
        """Poisson-sampled batches whenever a finite ε is claimed (noise is added)."""
        return self.noise_multiplier > 0


def secret_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from the OS's secure source (not reproducible, by design)."""
    return torch.Generator(device=device).manual_seed(secrets.randbits(63))


def poisson_batches(n: int, sample_rate: float, steps: int, generator: torch.Generator) -> list[np.ndarray]:
    """``steps`` batches, each holding every one of ``n`` examples independently with ``sample_rate``."""
    return [torch.nonzero(torch.rand(n, generator=generator) < sample_rate).flatten().numpy() for _ in range(steps)]


def clip_factors(norms: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Per-example scale min(1, C / (‖g_i‖ + eps)): every scaled gradient has norm at most C."""
    return (max_norm / (norms + NORM_EPS)).clamp(max=1.0)


def clipped_sum(per_example: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    """Σ_i clip(g_i) for per-example gradients given as tensors (B, *shape), clipped jointly."""
    norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in per_example]).sum(0).sqrt()
    factors = clip_factors(norms, max_norm)
    return [torch.einsum("b...,b->...", g, factors.to(g.dtype)) for g in per_example]


def add_noise(total: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """``total`` plus N(0, std²) per entry (a new tensor)."""
    noise = torch.randn(total.shape, generator=generator, device=total.device, dtype=total.dtype)
    return total + noise * std


class PrivateStep:
    """Turns one batch's backward pass into the DP-SGD gradient in each parameter's ``.grad``."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter], privacy: ExamplePrivacy, n: int, device) -> None:
        if privacy.noise_multiplier > 0 and privacy.max_grad_norm is None:
            raise ValueError("DP-SGD noise without per-example clipping bounds nothing: set max_grad_norm")
        self.privacy = privacy
        self.params = params
        self.n = n
        self.generator = secret_generator(device)
        self.grads = PerExampleGrads(model) if privacy.max_grad_norm is not None else None
        self.totals: dict[nn.Parameter, torch.Tensor] = {}  # clipped sums of the batch's passes so far

    def poisson_batches(self, steps: int) -> list[np.ndarray]:
        return poisson_batches(self.n, self.privacy.sample_rate, steps, secret_generator())

    def accumulate(self, loss: torch.Tensor, count: int) -> None:
        """One pass's backward: ``loss`` is its examples' summed loss over ``count``, the whole
        batch's size (a micro-batch's share of the batch mean); their clipped gradients join the sum."""
        loss.backward()
        if self.grads is None:
            return  # no clipping: the ordinary mean gradient accumulates in .grad
        c = self.privacy.max_grad_norm
        assert c is not None
        sums = self.grads.weighted_sums(clip_factors(self.grads.squared_norms(count).sqrt(), c), count)
        for p, total in sums.items():
            self.totals[p] = total if p not in self.totals else self.totals[p] + total

    def finish(self, count: int) -> None:
        """The batch of ``count`` examples is done: each parameter's ``.grad`` becomes the noised
        clipped sum over the Poisson batch's expected size (or ``count`` without Poisson sampling)."""
        totals, self.totals = self.totals, {}
        if self.grads is None:
            return
        c = self.privacy.max_grad_norm
        assert c is not None
        denominator = self.privacy.sample_rate * self.n if self.privacy.poisson else max(count, 1)
        std = self.privacy.noise_multiplier * c
        for p in self.params:
            total = totals.get(p, None)
            if total is None:
                total = torch.zeros_like(p, dtype=torch.float32)
            if std > 0:
                total = add_noise(total, std, self.generator)
            p.grad = (total / denominator).to(p.dtype)

    def backward(self, loss: torch.Tensor | None, count: int) -> None:
        """``loss``: the batch's mean loss (None for an empty Poisson batch) over ``count`` examples."""
        if loss is not None:
            self.accumulate(loss, count)
        self.finish(count)

    def close(self) -> None:
        if self.grads is not None:
            self.grads.close()
