"""Client-level DP for the aggregate (McMahan et al. 2018, on masks): each client's contribution is
bounded, and noise calibrated to that bound is added to the sum once per round.

- Masks (``bernoulli``, ``threshold``): a client's mask may differ from the reference (the global's
  likelier value per weight) in at most ``max_flips`` = K positions, so its contribution
  u = m − ref ∈ {−1, 0, 1}^d has L2 norm at most √K. The integer sum Σ u gets discrete Gaussian noise
  (Canonne, Kamath, Steinke 2020), which satisfies the same zCDP as the Gaussian with the same σ up to
  a term 2τd (their Theorem 14, τ ≤ 10·d·exp(−π²σ²)); we require σ ≥ ``MIN_DISCRETE_SIGMA``, where
  that term is below 1e-19 for any d ≤ 1e9, and account it as the Gaussian.
- Floats (head, scaling vectors): the update from the global is clipped to ``client_clip`` in L2
  and the sum gets Gaussian noise.
With P such parts, each gets noise std z·√P·(its bound), so the whole release is one Gaussian
mechanism with noise multiplier z. The sum is divided by the planned number of clients per round
(public), never by a data-dependent count; clients are weighted equally, not by examples.
"""

from __future__ import annotations

import math

import torch

from ..checkpoint import global_key
from ..checkpoint import ClientRecord
from ..config import Config
from ..errors import SupermaskError
from ..mask.kinds import kind_of
from ..mask.layer import MaskedLinear
from . import ledger
from .dpsgd import secret_generator

MIN_DISCRETE_SIGMA = 3.0


def reference(kind: str, global_tensors: dict[str, torch.Tensor], client_key: str) -> torch.Tensor:
    """The global's likelier mask value per weight: probs ≥ 0.5 (bernoulli) or its mask (threshold)."""
    return kind_of(kind).hard_reference(global_tensors[global_key(client_key, kind)])


def bound_flips(
    masks: dict[str, torch.Tensor], refs: dict[str, torch.Tensor], max_flips: int,
    priority: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """``masks`` with at most ``max_flips`` entries (over all tensors) different from ``refs``: the
    flips of highest ``priority`` are kept (ties, or no priority: the first in order), the rest reset."""
    names = list(masks)
    diff = torch.cat([(masks[k].bool() != refs[k]).flatten() for k in names])
    if int(diff.sum()) <= max_flips:
        return masks
    flips = torch.nonzero(diff).flatten()
    if priority is not None:
        score = torch.cat([priority[k].float().flatten() for k in names])[flips]
        flips = flips[torch.argsort(score, descending=True, stable=True)]
    keep = torch.zeros_like(diff)
    keep[flips[:max_flips]] = True
    out, start = {}, 0
    for k in names:
        size = masks[k].numel()
        kept = keep[start : start + size].view(masks[k].shape)
        out[k] = torch.where(kept, masks[k].bool(), refs[k])
        start += size
    return out


def clip_l2(tensors: dict[str, torch.Tensor], bound: float) -> dict[str, torch.Tensor]:
    """The tensors scaled jointly so that their L2 norm is at most ``bound``."""
    norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors.values()))
    factor = min(1.0, bound / norm) if norm > 0 else 1.0
    return {k: t * factor for k, t in tensors.items()}


def public_record(record: ClientRecord) -> ClientRecord:
    """What a global says of one upload in client mode: whose it is and its example count, never a
    value computed from the un-noised upload itself (its digest, size or mask bits)."""
    return ClientRecord(client=record.client, num_examples=record.num_examples)


def discrete_gaussian(shape: tuple[int, ...], sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Integers with P(x) ∝ exp(−x²/2σ²): Canonne et al. 2020's rejection sampler from the discrete
    Laplace (a difference of two geometrics), vectorised."""
    n = math.prod(shape)
    t = math.floor(sigma) + 1
    out = torch.empty(n, dtype=torch.int64)
    todo = torch.arange(n)
    while todo.numel():
        g = torch.empty(2, todo.numel(), dtype=torch.float64).geometric_(1 - math.exp(-1 / t), generator=generator)
        y = g[0] - g[1]
        accept_p = torch.exp(-((y.abs() - sigma**2 / t) ** 2) / (2 * sigma**2))
        accept = torch.rand(todo.numel(), generator=generator, dtype=torch.float64) < accept_p
        out[todo[accept]] = y[accept].long()
        todo = todo[~accept]
    return out.view(shape)


def noisy_mean(
    kind: str, global_tensors: dict[str, torch.Tensor], clients: list[dict[str, torch.Tensor]], *,
    noise_multiplier: float, max_flips: int, client_clip: float, planned_clients: int, generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The clients' mean, keyed like a client file (``mask/…`` as a fraction of ones, floats as
    values), from bounded contributions plus noise; ``aggregate.finalize`` turns it into a global."""
    keys = sorted(clients[0])
    mask_keys = [k for k in keys if k.startswith("mask/")]
    float_keys = [k for k in keys if not k.startswith("mask/")]
    mask_sums: dict[str, torch.Tensor] = {}
    float_sums: dict[str, torch.Tensor] = {}
    if mask_keys:
        refs = {k: reference(kind, global_tensors, k) for k in mask_keys}
        mask_sums = {k: torch.zeros(refs[k].shape, dtype=torch.int64) for k in mask_keys}
        for c in clients:
            bounded = bound_flips({k: c[k] for k in mask_keys}, refs, max_flips)
            for k in mask_keys:
                mask_sums[k] += bounded[k].long() - refs[k].long()
    if float_keys:
        prev = {k: global_tensors[global_key(k, kind)].double() for k in float_keys}
        float_sums = {k: torch.zeros_like(prev[k]) for k in float_keys}
        for c in clients:
            update = clip_l2({k: c[k].double() - prev[k] for k in float_keys}, client_clip)
            for k in float_keys:
                float_sums[k] += update[k]
    return noisy_from_sums(kind, global_tensors, mask_sums, float_sums, noise_multiplier=noise_multiplier,
                           max_flips=max_flips, client_clip=client_clip, planned_clients=planned_clients, generator=generator)


def noisy_from_sums(
    kind: str, global_tensors: dict[str, torch.Tensor], mask_sums: dict[str, torch.Tensor], float_sums: dict[str, torch.Tensor],
    *, noise_multiplier: float, max_flips: int, client_clip: float, planned_clients: int, generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The noisy mean from the sums of bounded contributions: ``mask_sums`` Σ (m − ref) (int64),
    ``float_sums`` Σ clipped update (float64). Secure aggregation hands the server only these sums
    (its clients bound themselves), so the noise is added here, after unmasking."""
    parts = int(bool(mask_sums)) + int(bool(float_sums))
    z = noise_multiplier * math.sqrt(parts)
    out: dict[str, torch.Tensor] = {}
    if mask_sums:
        sigma = z * math.sqrt(max_flips)
        if 0 < sigma < MIN_DISCRETE_SIGMA:
            raise SupermaskError(
                f"privacy: discrete noise std {sigma:.2f} is below {MIN_DISCRETE_SIGMA}; "
                "raise privacy.max_flips or the noise"
            )
        for k in sorted(mask_sums):
            noise = discrete_gaussian(tuple(mask_sums[k].shape), sigma, generator) if sigma > 0 else 0
            out[k] = reference(kind, global_tensors, k).double() + (mask_sums[k] + noise).double() / planned_clients
    if float_sums:
        std = z * client_clip
        for k in sorted(float_sums):
            prev = global_tensors[global_key(k, kind)].double()
            noise = torch.randn(float_sums[k].shape, generator=generator, dtype=torch.float64) * std
            out[k] = prev + (float_sums[k] + noise) / planned_clients
    return {k: v.float() for k, v in out.items()}


def clip_upload(kind: str, upload: dict[str, torch.Tensor], global_tensors: dict[str, torch.Tensor], bound: float) -> dict[str, torch.Tensor]:
    """A client's own L2 clipping of its float update (head, scaling vectors) before a masked
    upload: the server, seeing only sums, cannot clip it. Returns global + clipped update."""
    float_keys = [k for k in upload if not k.startswith("mask/")]
    prev = {k: global_tensors[global_key(k, kind)].double() for k in float_keys}
    update = clip_l2({k: upload[k].double() - prev[k] for k in float_keys}, bound)
    return {**upload, **{k: (prev[k] + update[k]).float() for k in float_keys}}


def aggregate_sums(cfg: Config, kind: str, global_tensors: dict[str, torch.Tensor], count: int,
                   sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``noisy_from_sums`` for secure aggregation: ``sums`` are the ``count`` survivors' plain sums
    Σ m (masks) and Σ (global + clipped update) (floats), as unmasked."""
    fed, p = cfg.federation, cfg.privacy
    planned = min(fed.clients_per_round or fed.num_clients, fed.num_clients)
    mask_sums = {k: v.round().long() - count * reference(kind, global_tensors, k).long() for k, v in sums.items() if k.startswith("mask/")}
    float_sums = {k: v.double() - count * global_tensors[global_key(k, kind)].double() for k, v in sums.items() if not k.startswith("mask/")}
    return noisy_from_sums(kind, global_tensors, mask_sums, float_sums, noise_multiplier=ledger.client_noise(cfg),
                           max_flips=p.max_flips, client_clip=p.client_clip, planned_clients=planned, generator=secret_generator())


def bound_upload(
    kind: str, upload: dict[str, torch.Tensor], global_tensors: dict[str, torch.Tensor],
    priority: dict[str, torch.Tensor], max_flips: int,
) -> dict[str, torch.Tensor]:
    """A client's own bound before upload: keep the K flips where it moved furthest from the global
    (``priority``: |client probs − global probs| or |scores − τ|, keyed ``mask/…``). The server
    enforces the bound again (first K in order), a no-op on honest uploads."""
    mask_keys = [k for k in upload if k.startswith("mask/")]
    if not mask_keys:
        return upload
    refs = {k: reference(kind, global_tensors, k) for k in mask_keys}
    bounded = bound_flips({k: upload[k] for k in mask_keys}, refs, max_flips, priority)
    return {**upload, **bounded}


def flip_priority(
    kind: str, layers: dict[str, MaskedLinear], global_tensors: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """How far the client moved each weight: |probs − global probs| (bernoulli) or |scores − τ|;
    empty for kinds without a mask (their float update is clipped instead)."""
    spec = kind_of(kind)
    if not spec.binary:
        return {}
    with torch.no_grad():
        return {f"mask/{name}": spec.flip_priority(layer, global_tensors[f"{spec.global_group}/{name}"])
                for name, layer in layers.items()}


def aggregate(
    cfg: Config, kind: str, global_tensors: dict[str, torch.Tensor], clients: list[dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """``noisy_mean`` with the run's privacy settings and secret noise."""
    fed, p = cfg.federation, cfg.privacy
    planned = min(fed.clients_per_round or fed.num_clients, fed.num_clients)
    return noisy_mean(
        kind, global_tensors, clients, noise_multiplier=ledger.client_noise(cfg), max_flips=p.max_flips,
        client_clip=p.client_clip, planned_clients=planned, generator=secret_generator(),
    )
