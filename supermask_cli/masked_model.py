"""Between files and models: start training from a global, extract an upload, bake a global in."""

from __future__ import annotations

import torch
from torch import nn

from .checkpoint import Checkpoint
from .mask.inject import inject
from .mask.kinds import kind_of
from .mask.layer import MaskedLinear
from .model import BaseModel


def load_head(model: nn.Module, head: dict[str, torch.Tensor]) -> None:
    """Copy head tensors into the model's parameters of the same names."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in head.items():
            params[name].copy_(value.to(params[name].dtype))


def trainable_from_global(
    base: BaseModel, ckpt: Checkpoint, *, tau: float, init_score: float
) -> tuple[dict[str, MaskedLinear], list[nn.Parameter]]:
    """Wrap the targets so that the masked model starts from the global; returns layers and head params."""
    spec = kind_of(ckpt.meta.kind)
    load_head(base.model, ckpt.group("head"))
    layers = inject(base.model, base.targets, spec.name, tau)
    with torch.no_grad():
        for name, layer in layers.items():
            spec.start(layer, ckpt.tensors[f"{spec.global_group}/{name}"], tau, init_score)
    head_names = set(ckpt.group("head"))
    head_params = [p for n, p in base.model.named_parameters() if n in head_names]
    for p in head_params:
        p.requires_grad_(True)
    return layers, head_params


def upload_tensors(
    layers: dict[str, MaskedLinear], head_params: dict[str, nn.Parameter], kind: str, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """What a client uploads: one sampled mask (bernoulli), the hard mask (threshold) or the
    scaling vectors, plus the head; decoded form, on CPU."""
    spec = kind_of(kind)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, layer in layers.items():
            out[f"{spec.payload}/{name}"] = spec.upload(layer, generator)
        for name, p in head_params.items():
            out[f"head/{name}"] = p.detach().float().cpu().clone()
    return out


def bake_global(base: BaseModel, ckpt: Checkpoint, eval_mode: str = "expected", seed: int = 0) -> nn.Module:
    """The plain model the global describes: masks (or scaling vectors) folded into the weights.

    ``bernoulli`` globals use the expected mask W * probs (``expected``) or one seeded sample
    (``sample``): the network the clients trained, never probs >= 0.5."""
    spec = kind_of(ckpt.meta.kind)
    load_head(base.model, ckpt.group("head"))
    generator = torch.Generator().manual_seed(seed)
    for name in base.targets:
        value = spec.bake_value(ckpt.tensors[f"{spec.global_group}/{name}"], eval_mode, generator)
        spec.bake(base.model.get_submodule(name), value)
    base.model.eval()
    return base.model
