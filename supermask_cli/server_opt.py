"""Server optimizers (Reddi et al. 2021, *Adaptive Federated Optimization*): pure functions.

The clients' reduced value (the aggregation rule's output, see ``aggregate``) minus the previous
global is a pseudo-gradient Δ, taken in **score space**, the space the clients train in:

- bernoulli ``probs/*``: scores = logit(probs) (both the reduced mask mean and the previous probs
  are clamped to [ε, 1-ε] first), and the new probs = σ(new scores);
- ``scale/*`` and ``head/*``: the float values themselves;
- threshold ``mask/*``: the reduced value is a vote share, not a parameter; the majority vote
  passes through untouched (only the head of a threshold run is stepped).

With x the previous global in score space, per coordinate (no bias correction, as in the paper):

==========  ====================================================================================
``sgd``     x + η·Δ                                  (η = 1: plain averaging, FedAvg)
``momentum`` m = β₁·m + Δ;  x + η·m                   (FedAvgM, Hsu et al. 2019)
``adam``    m = β₁·m + (1−β₁)·Δ;  v = β₂·v + (1−β₂)·Δ²;  x + η·m / (√v + τ)
``yogi``    m as adam;  v = v − (1−β₂)·Δ²·sign(v − Δ²);  x + η·m / (√v + τ)
==========  ====================================================================================

``head_lr`` (``federation.server_head_lr``) steps ``head/*`` at its own rate: adam and yogi move
every coordinate by about η on their first steps, and a rate that lets logits move (≈0.1–1) would
throw a fresh classifier around, while one that suits the head (≈1e-2) freezes the masks.

m and v start at zero. They live in the global file as ``opt_m/<global key>`` and
``opt_v/<global key>`` (float32, the tensor's shape) so that the next ``aggregate``, in another
process or on another machine, continues from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checkpoint import global_key
from .mask.functions import clamp_probs
from .mask.kinds import kind_of

OPTIMIZERS = ("sgd", "momentum", "adam", "yogi")
STATE_GROUPS = ("opt_m", "opt_v")


@dataclass(frozen=True)
class ServerOptimizer:
    name: str = "sgd"
    lr: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    head_lr: float | None = None  # None: ``lr``

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown server optimizer {self.name!r}; known: {', '.join(OPTIMIZERS)}")

    @property
    def is_identity(self) -> bool:
        """Plain averaging: the reduced value becomes the global unchanged."""
        return self.name == "sgd" and self.lr == 1.0 and self.head_lr in (None, 1.0)

    def rate(self, global_key: str) -> float:
        """The learning rate of one global tensor: ``head_lr`` for ``head/*`` when set, else ``lr``."""
        return self.head_lr if self.head_lr is not None and global_key.startswith("head/") else self.lr


def from_config(federation) -> ServerOptimizer:
    """The server optimizer of a ``federation`` config section."""
    beta1, beta2 = federation.server_betas
    return ServerOptimizer(federation.server_optimizer, federation.server_lr, beta1, beta2, federation.server_tau,
                           federation.server_head_lr)


def state_groups(name: str) -> tuple[str, ...]:
    """The state tensor groups an optimizer keeps in the global file."""
    return {"sgd": (), "momentum": ("opt_m",), "adam": STATE_GROUPS, "yogi": STATE_GROUPS}[name]


def stepped(global_key: str, kind: str) -> bool:
    """Whether the optimizer steps this global tensor (threshold masks are votes and pass through)."""
    spec = kind_of(kind)
    return spec.server_steps or not global_key.startswith(f"{spec.global_group}/")


def to_scores(global_key: str, value: torch.Tensor) -> torch.Tensor:
    """A global value in the space the clients train in (logit of clamped probs for ``probs/*``)."""
    if global_key.startswith("probs/"):
        return torch.logit(clamp_probs(value.double()))
    return value.double()


def from_scores(global_key: str, value: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_scores` (float32)."""
    if global_key.startswith("probs/"):
        return torch.sigmoid(value).float()
    return value.float()


def update(
    opt: ServerOptimizer, delta: torch.Tensor, m: torch.Tensor | None, v: torch.Tensor | None, lr: float | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One optimizer step on a pseudo-gradient Δ: (step added to x, new m, new v); None = no state.
    ``lr`` overrides ``opt.lr`` (the tensor's rate, :meth:`ServerOptimizer.rate`)."""
    delta = delta.double()
    lr = opt.lr if lr is None else lr
    if opt.name == "sgd":
        return lr * delta, None, None
    m = torch.zeros_like(delta) if m is None else m.double()
    if opt.name == "momentum":
        m = opt.beta1 * m + delta
        return lr * m, m, None
    m = opt.beta1 * m + (1 - opt.beta1) * delta
    v = torch.zeros_like(delta) if v is None else v.double()
    square = delta * delta
    if opt.name == "adam":
        v = opt.beta2 * v + (1 - opt.beta2) * square
    else:
        v = v - (1 - opt.beta2) * square * torch.sign(v - square)
    return lr * m / (v.sqrt() + opt.tau), m, v


def server_step(
    reduced: dict[str, torch.Tensor],
    previous: dict[str, torch.Tensor],
    kind: str,
    opt: ServerOptimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Step every reduced value from the previous global; returns (values in the reduced space,
    optimizer state keyed ``opt_m/<global key>`` / ``opt_v/<global key>``).

    ``reduced`` is keyed by client key; ``checkpoint.global_key(client_key, kind)`` names the global
    tensor. Threshold masks are votes, not averages, and pass through.
    ``previous`` is the round's global tensors, state included (missing state = zeros)."""
    if opt.is_identity:
        return reduced, {}
    out: dict[str, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    for key, value in reduced.items():
        gkey = global_key(key, kind)
        if not stepped(gkey, kind):
            out[key] = value
            continue
        x = to_scores(gkey, previous[gkey])
        step, m, v = update(opt, to_scores(gkey, value) - x, previous.get(f"opt_m/{gkey}"), previous.get(f"opt_v/{gkey}"),
                            opt.rate(gkey))
        out[key] = from_scores(gkey, x + step)
        if m is not None:
            state[f"opt_m/{gkey}"] = m.float()
        if v is not None:
            state[f"opt_v/{gkey}"] = v.float()
    return out, state
