"""Per-example gradients of the trainable tensors, in closed form from each layer's input and
output gradient (captured by hooks), for ``MaskedLinear`` and linear heads.

For a linear layer with W_eff = W ⊙ m, example i's dL/dW_eff = Σ_t g_it x_itᵀ (t: sequence
positions); the straight-through estimators then give dL/dscores_i = that ⊙ W (``threshold``),
times sigmoid'(scores) (``bernoulli``), as ``mask.functions`` does for the batch. For
y = (Wx + b) ⊙ v (``scaling``): dL/dv_i = Σ_t g_it ⊙ (W x_it + b). Heads: dL/dW_i = Σ_t g_it x_itᵀ,
dL/db_i = Σ_t g_it. Memory: one layer's (batch × weights) floats at a time, for the norms; the
clipped sum is one weighted matmul per layer (see ``PerExampleGrads.weighted_sums``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SupermaskError
from ..mask.layer import MaskedLinear, is_conv1d


def _outer(module: nn.Module, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σ_t g_it x_itᵀ per example, in the layout of ``module.weight`` (Conv1D stores (in, out))."""
    if is_conv1d(module):
        return torch.einsum("bti,bto->bio", x, g)
    return torch.einsum("bto,bti->boi", g, x)


@torch.no_grad()
def per_example_grads(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """Example i's gradient of each trainable tensor of ``module`` (B, *shape), from its input ``x``
    and the gradient ``g`` of the per-example loss sum at its output, both (B, T, ·) or (B, ·)."""
    if x.dim() == 2:
        x, g = x.unsqueeze(1), g.unsqueeze(1)
    x, g = x.float(), g.float()
    if isinstance(module, MaskedLinear):
        base = module.base
        if not module.spec.binary:
            weight = base.weight.float()
            pre = x @ (weight if is_conv1d(base) else weight.t())
            if base.bias is not None:
                pre = pre + base.bias.float()
            return {module.scale: (g * pre).sum(1)}
        grad = _outer(base, g, x) * base.weight.float()
        if module.spec.probabilistic:  # sigmoid-scaled estimator (mask.functions)
            grad = torch.ops.aten.sigmoid_backward(grad, torch.sigmoid(module.scores.float()))
        return {module.scores: grad}
    out = {}
    if module.weight.requires_grad:
        out[module.weight] = _outer(module, g, x)
    if getattr(module, "bias", None) is not None and module.bias.requires_grad:
        out[module.bias] = g.sum(1)
    return out


def trainable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules holding trainable tensors directly; each must be a ``MaskedLinear`` or a linear head."""
    found = {}
    for name, module in model.named_modules():
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        if not (isinstance(module, (MaskedLinear, nn.Linear)) or is_conv1d(module)):
            raise SupermaskError(
                f"privacy.mode example: no per-example gradient for {type(module).__name__} '{name}'; "
                "head modules must be linear (model.head_modules)"
            )
        found[name] = module
    return found


class PerExampleGrads:
    """Hooks on every trainable module: its input at forward, its output gradient at backward."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = trainable_modules(model)
        self.inputs: dict[nn.Module, torch.Tensor] = {}
        self.outgrads: dict[nn.Module, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(self._forward) for m in self.modules.values()]

    def _forward(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if module in self.inputs and module not in self.outgrads:
            raise SupermaskError("privacy.mode example: a trainable module ran twice in one forward pass")
        self.inputs[module] = args[0].detach()
        self.outgrads.pop(module, None)

        def keep(grad: torch.Tensor) -> None:
            self.outgrads[module] = grad.detach()

        output.register_hook(keep)

    def per_example(self, count: int) -> dict[nn.Parameter, torch.Tensor]:
        """Every trainable tensor's per-example gradients (B, *shape) after the backward pass of a
        mean loss over ``count`` examples (the output gradients times ``count``)."""
        out = {}
        for module in self.modules.values():
            out.update(per_example_grads(module, self.inputs[module], self.outgrads[module] * count))
        return out

    def squared_norms(self, count: int) -> torch.Tensor:
        """‖g_i‖² over all trainable tensors, per example, one module's gradients in memory at a time."""
        total = torch.zeros(())
        for module in self.modules.values():
            for g in per_example_grads(module, self.inputs[module], self.outgrads[module] * count).values():
                total = total.to(g.device) + g.flatten(1).pow(2).sum(1)
        return total

    def weighted_sums(self, factors: torch.Tensor, count: int) -> dict[nn.Parameter, torch.Tensor]:
        """Σ_i factors_i g_i per tensor, then forget the batch.

        Every per-example gradient above is linear in the output gradient g_i, with factors that do
        not depend on i (W, sigmoid'(scores), the pre-activation), so Σ_i f_i g_i is the gradient of
        one "example" whose positions are all (i, t), with output gradient f_i g_it: one matmul per
        module instead of materialising the batch's per-example gradients a second time."""
        totals = {}
        for module in self.modules.values():
            x, g = self.inputs[module], self.outgrads[module] * count
            scale = factors.to(g.device, g.dtype).reshape(-1, *([1] * (g.dim() - 1)))
            merged_x = x.reshape(1, -1, x.shape[-1])
            merged_g = (g * scale).reshape(1, -1, g.shape[-1])
            totals.update({p: grad[0] for p, grad in per_example_grads(module, merged_x, merged_g).items()})
        self.inputs.clear()
        self.outgrads.clear()
        return totals

    def close(self) -> None:
        for h in self.handles:
            h.remove()
