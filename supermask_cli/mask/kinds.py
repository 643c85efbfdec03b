"""The mask kinds, one class each: everything that differs between ``bernoulli``, ``threshold``
and ``scaling`` lives here, found through :func:`kind_of` (README "Mask kinds").

Generic code (the layer, the file format, the rules, training, privacy) asks the kind instead of
branching on its name:

- **layer**: which trainable tensor a ``MaskedLinear`` holds, its forward and masked weight;
- **files**: the group a client uploads per target (``payload``: ``mask`` or ``scale``), the group
  of the global (``global_group``: ``probs``, ``mask`` or ``scale``), which encodings apply;
- **rounds**: round 0's global, how a client starts from a global and what it uploads, how a
  reduced value becomes the global (``finalize``), whether the server optimizer steps it;
- **evaluation**: how the global is baked into plain weights (``bake_value``, ``bake``);
- **robust and private aggregation**: an upload's distance from the global (``surprise``), the
  hard reference mask and flip priority of client-level DP.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import functions as fn
from .linear import is_conv1d, linear_forward, out_features

BINARY_UPLOAD_ENCODINGS = ("packed", "coded", "sparse", "none")


class MaskKind:
    """What every kind answers; the binary kinds share the mask-shaped parts."""

    name: str
    payload = "mask"  # the group a client uploads per target module
    global_group = "mask"  # the group the global holds per target module
    global_encoding = "packed"
    upload_encodings: tuple[str, ...] = BINARY_UPLOAD_ENCODINGS
    coded_with_flip_rate = False  # a ``coded`` upload records the flip rate its code assumes
    server_steps = True  # the server optimizer moves the global's value (votes are not averages)
    default_lr: float
    default_dropout = True  # ``train.dropout: null``

    @property
    def binary(self) -> bool:
        """Clients upload 0/1 masks (else float vectors)."""
        return self.payload == "mask"

    @property
    def probabilistic(self) -> bool:
        """The global holds keep-probabilities (the Beta posterior and ``mask.eval`` apply)."""
        return self.global_group == "probs"

    # ---- the layer
    def init_params(self, layer: nn.Module, base: nn.Module) -> None:
        layer.scores = nn.Parameter(torch.zeros_like(base.weight, dtype=torch.float32))

    def forward(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return linear_forward(layer.base, x, self.masked_weight(layer))

    def masked_weight(self, layer: nn.Module) -> torch.Tensor:
        raise NotImplementedError

    def current_mask(self, layer: nn.Module) -> torch.Tensor:
        raise NotImplementedError

    def trainable(self, layer: nn.Module) -> nn.Parameter:
        return layer.scores

    # ---- rounds
    def initial(self, shape: list[int], module: nn.Module, init_density: float) -> torch.Tensor:
        """Round 0's global value for one target: keep every weight."""
        raise NotImplementedError

    def start(self, layer: nn.Module, value: torch.Tensor, tau: float, init_score: float) -> None:
        """Set a layer's trainable tensor from the global's value (no grad)."""
        raise NotImplementedError

    def upload(self, layer: nn.Module, generator: torch.Generator) -> torch.Tensor:
        """What the client uploads for one layer (decoded, on CPU)."""
        raise NotImplementedError

    def finalize(self, reduced: torch.Tensor) -> torch.Tensor:
        """A reduced client value of the payload group -> the global's value."""
        return reduced

    # ---- evaluation
    def bake_value(self, value: torch.Tensor, eval_mode: str, generator: torch.Generator) -> torch.Tensor:
        """The global's value -> what ``bake`` folds into the weights."""
        return value

    def bake(self, module: nn.Module, value: torch.Tensor) -> None:
        """Fold a mask (or mask probabilities) into ``module``'s frozen weights in place."""
        with torch.no_grad():
            module.weight.mul_(value.to(device=module.weight.device, dtype=module.weight.dtype))

    # ---- files and aggregation
    def coded_probs(self, value: torch.Tensor, flip_rate: float) -> torch.Tensor:
        """The probabilities an upload's mask is entropy-coded against, from the global's value."""
        raise NotImplementedError

    def surprise(self, client: torch.Tensor, global_value: torch.Tensor) -> float:
        """Sum over one target of how far an upload is from the global (``rules.surprise``)."""
        return float((client != global_value).sum())

    def surprise_per_weight(self, mean: float) -> float:
        return mean

    # ---- client-level privacy
    def hard_reference(self, value: torch.Tensor) -> torch.Tensor:
        """The 0/1 mask a client's flips are counted from."""
        return value.bool()

    def flip_priority(self, layer: nn.Module, value: torch.Tensor) -> torch.Tensor:
        """How far the client moved each weight from the global (largest flips kept first)."""
        return (layer.scores.detach().float().cpu() - layer.tau).abs()


class Bernoulli(MaskKind):
    """FedPM: m ~ Bernoulli(σ(scores)), a fresh sample each step; the global holds probs."""

    name = "bernoulli"
    global_group = "probs"
    global_encoding = "float"
    default_lr = 0.1
    default_dropout = False  # sampled masks already drop weights at random

    def current_mask(self, layer: nn.Module) -> torch.Tensor:
        return fn.sample_bernoulli_mask(layer.scores) if layer.training else torch.sigmoid(layer.scores)

    def masked_weight(self, layer: nn.Module) -> torch.Tensor:
        if not layer.training:
            return layer.base.weight * torch.sigmoid(layer.scores).to(layer.base.weight.dtype)
        # The masked weight only feeds linear_forward's matmul: its gradient is private to us.
        f = fn.compiled_masked_weight(self.name) if layer.compiled else fn.bernoulli_masked_weight
        return f(layer.base.weight, layer.scores, private_grad=True)

    def initial(self, shape: list[int], module: nn.Module, init_density: float) -> torch.Tensor:
        return torch.full(shape, init_density, dtype=torch.float32)

    def start(self, layer: nn.Module, value: torch.Tensor, tau: float, init_score: float) -> None:
        layer.scores.copy_(fn.scores_from_probs(value))

    def upload(self, layer: nn.Module, generator: torch.Generator) -> torch.Tensor:
        probs = torch.sigmoid(layer.scores.detach().float().cpu())
        return torch.bernoulli(probs, generator=generator).bool()

    def finalize(self, reduced: torch.Tensor) -> torch.Tensor:
        return fn.clamp_probs(reduced)

    def bake_value(self, value: torch.Tensor, eval_mode: str, generator: torch.Generator) -> torch.Tensor:
        return value if eval_mode == "expected" else torch.bernoulli(value, generator=generator)

    def coded_probs(self, value: torch.Tensor, flip_rate: float) -> torch.Tensor:
        return value

    def surprise(self, client: torch.Tensor, global_value: torch.Tensor) -> float:
        probs = fn.clamp_probs(global_value.double())
        return float(-torch.where(client, probs, 1 - probs).log2().sum())

    def hard_reference(self, value: torch.Tensor) -> torch.Tensor:
        return value >= 0.5

    def flip_priority(self, layer: nn.Module, value: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(layer.scores.detach().float().cpu()) - value.float()).abs()


class Threshold(MaskKind):
    """Zhao et al.; Piggyback: m = [scores ≥ τ]; the global is the weighted majority vote."""

    name = "threshold"
    coded_with_flip_rate = True
    server_steps = False
    default_lr = 3e-4

    def current_mask(self, layer: nn.Module) -> torch.Tensor:
        return fn.threshold_mask(layer.scores, layer.tau)

    def masked_weight(self, layer: nn.Module) -> torch.Tensor:
        f = fn.compiled_masked_weight(self.name) if layer.compiled else fn.threshold_masked_weight
        return f(layer.base.weight, layer.scores, layer.tau, private_grad=True)

    def initial(self, shape: list[int], module: nn.Module, init_density: float) -> torch.Tensor:
        return torch.ones(shape, dtype=torch.bool)

    def start(self, layer: nn.Module, value: torch.Tensor, tau: float, init_score: float) -> None:
        layer.scores.copy_(fn.scores_from_mask(value, tau, init_score))

    def upload(self, layer: nn.Module, generator: torch.Generator) -> torch.Tensor:
        return layer.scores.detach().cpu() >= layer.tau

    def finalize(self, reduced: torch.Tensor) -> torch.Tensor:
        return reduced >= 0.5  # weighted majority; ties keep the weight

    def coded_probs(self, value: torch.Tensor, flip_rate: float) -> torch.Tensor:
        return torch.where(value, 1.0 - flip_rate, flip_rate).float()


class Scaling(MaskKind):
    """IA³-like: y = (Wx + b) ⊙ v, v = 1 at start; clients upload the float vectors v."""

    name = "scaling"
    payload = "scale"
    global_group = "scale"
    global_encoding = "float"
    upload_encodings = ("float",)
    default_lr = 1e-3

    def init_params(self, layer: nn.Module, base: nn.Module) -> None:
        layer.scale = nn.Parameter(torch.ones(out_features(base), device=base.weight.device))

    def forward(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return linear_forward(layer.base, x, layer.base.weight) * layer.scale.to(x.dtype)

    def trainable(self, layer: nn.Module) -> nn.Parameter:
        return layer.scale

    def initial(self, shape: list[int], module: nn.Module, init_density: float) -> torch.Tensor:
        return torch.ones(out_features(module))

    def start(self, layer: nn.Module, value: torch.Tensor, tau: float, init_score: float) -> None:
        layer.scale.copy_(value)

    def upload(self, layer: nn.Module, generator: torch.Generator) -> torch.Tensor:
        return layer.scale.detach().float().cpu().clone()

    def bake(self, module: nn.Module, value: torch.Tensor) -> None:
        with torch.no_grad():
            v = value.to(device=module.weight.device, dtype=module.weight.dtype)
            module.weight.mul_(v.unsqueeze(0) if is_conv1d(module) else v.unsqueeze(1))
            if module.bias is not None:
                module.bias.mul_(v)

    def surprise(self, client: torch.Tensor, global_value: torch.Tensor) -> float:
        return float(((client.double() - global_value.double()) ** 2).sum())

    def surprise_per_weight(self, mean: float) -> float:
        return math.sqrt(mean)  # RMS change of the scaling vectors


KINDS: dict[str, MaskKind] = {k.name: k for k in (Bernoulli(), Threshold(), Scaling())}


def kind_of(name: str) -> MaskKind:
    """The kind named ``name`` (a config's ``mask.kind`` or a file's ``kind``)."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown mask kind {name!r}; known: {', '.join(KINDS)}") from None
