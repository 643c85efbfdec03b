"""Aggregation rules: pure functions over client tensors, chosen by tensor name and mask kind.

Each client tensor is keyed ``<group>/<name>`` (see ``checkpoint``). A rule reduces the stacked
client values ``x`` [N, ...] with example counts ``w`` [N] to one tensor; ``finalize`` then turns
the reduced value into the global tensor of that group:

- ``mask/*`` of ``bernoulli`` clients -> ``probs/*`` = reduced value clamped to [ε, 1-ε]
- ``mask/*`` of ``threshold`` clients -> ``mask/*`` = reduced value >= 0.5 (weighted majority; ties keep)
- ``scale/*``, ``head/*`` -> the reduced value

Client weights come from the self-reported example counts through :func:`example_weights`
(``federation.weighting``; default ``bounded``: capped at a multiple of the round's median).

Rules: ``mean`` (example-weighted), ``median`` (weighted coordinate-wise median), ``trimmed_mean``
(drop the ⌊βN⌋ lowest and highest values per coordinate, weighted mean of the rest), ``capped``
(example-weighted mean with each client's share of the weight capped) and ``filtered`` (drop
whole clients whose upload is an outlier in :func:`surprise` against the global, then ``mean``).
``mean``, ``capped`` and ``filtered`` are linear, so :class:`RunningMean` computes them one client
at a time. ``server_opt.server_step`` (``federation.server_optimizer``, ``server_lr``; see ``server_opt``)
then moves the global from its previous value in score space before ``finalize``.

Coordinate-wise ``median`` and ``trimmed_mean`` of *sampled* bernoulli masks push probs towards 0
or 1, so the evaluated network stops matching the thinned networks the clients trained: prefer
``filtered`` for bernoulli.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from . import server_opt
from .checkpoint import global_key
from .mask.kinds import kind_of
from .server_opt import ServerOptimizer

RULES = ("mean", "median", "trimmed_mean", "capped", "filtered", "bayes")
STREAMING_RULES = ("mean", "capped", "filtered", "bayes")
WEIGHTINGS = ("bounded", "examples", "uniform")
MEDIAN_MULTIPLE = 3.0
"""``bounded`` weighting: no client's weight exceeds this multiple of the round's median count."""
MIN_SPREAD = 1e-3
"""``filtered``: the spread is never below this (bits per weight, fraction of flipped bits, or RMS
change of the scaling vectors: 0.1% of a weight's scale), so tiny honest differences are not
outliers when most clients changed nothing."""


def example_weights(counts: list[int] | torch.Tensor, weighting: str, multiple: float = MEDIAN_MULTIPLE) -> torch.Tensor:
    """Each client's weight in the mean from its self-reported example counts (float64).

    ``examples``: the counts as reported (one client claiming millions of examples becomes the
    global); ``uniform``: 1 each; ``bounded`` (default): the counts, each capped at ``multiple``
    times the median count of the round (the lower middle value for an even number of clients),
    so honest size differences up to that factor keep their weight and a lie gains at most it."""
    w = torch.as_tensor(counts, dtype=torch.float64).reshape(-1)
    if weighting == "examples":
        return w
    if weighting == "uniform":
        return torch.ones_like(w)
    if weighting == "bounded":
        if w.numel() == 0:
            return w
        return w.clamp(max=multiple * float(w.median()))
    raise ValueError(f"unknown federation.weighting {weighting!r}; known: {', '.join(WEIGHTINGS)}")


def weighted_mean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Σ w_i x_i / Σ w_i over the first dimension."""
    w = w.to(torch.float64)
    shape = (-1,) + (1,) * (x.dim() - 1)
    return ((x.to(torch.float64) * w.view(shape)).sum(0) / w.sum()).float()


def weighted_median(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise weighted median; at an exact half split, the midpoint of the two middle values."""
    values, order = torch.sort(x.to(torch.float64), dim=0, stable=True)
    cum = torch.cumsum(w.to(torch.float64)[order], dim=0)
    half = cum[-1] / 2
    lower = torch.gather(values, 0, (cum < half).sum(0, keepdim=True)).squeeze(0)
    upper = torch.gather(values, 0, (cum <= half).sum(0, keepdim=True).clamp(max=x.shape[0] - 1)).squeeze(0)
    return ((lower + upper) / 2).float()


def trimmed_mean(x: torch.Tensor, w: torch.Tensor, beta: float) -> torch.Tensor:
    """Drop the ⌊βN⌋ smallest and largest values per coordinate; weighted mean of the rest."""
    n = x.shape[0]
    k = math.floor(beta * n)
    if n - 2 * k < 1:
        raise ValueError(f"trim ratio {beta} leaves no client of {n}")
    values, order = torch.sort(x.to(torch.float64), dim=0, stable=True)
    weights = w.to(torch.float64)[order]
    kept_v, kept_w = values[k : n - k], weights[k : n - k]
    return ((kept_v * kept_w).sum(0) / kept_w.sum(0)).float()


def capped_weights(w: torch.Tensor, max_share: float) -> torch.Tensor:
    """Lower the largest weights to a common cap c so that no client holds more than ``max_share``
    of the new total (equal weights when ``max_share * N <= 1``, where no such cap exists)."""
    w = w.to(torch.float64)
    n = w.numel()
    if max_share * n <= 1.0:
        return torch.ones_like(w)
    ordered, order = torch.sort(w, descending=True)
    for k in range(n):
        rest = ordered[k:].sum()
        cap = max_share * rest / (1.0 - max_share * k)
        if ordered[k] <= cap:
            out = ordered.clone()
            out[:k] = cap
            return torch.empty_like(w).scatter_(0, order, out)
    return torch.ones_like(w)


def surprise(kind: str, client: dict[str, torch.Tensor], global_: dict[str, torch.Tensor]) -> float:
    """How far an upload is from the global it trained from, per masked weight (heads ignored):
    bernoulli — bits of the client mask under the global probs; threshold — fraction of mask bits
    that differ from the global mask; scaling — RMS difference of the scaling vectors."""
    spec = kind_of(kind)
    total, count = 0.0, 0
    for key, value in client.items():
        if key.partition("/")[0] != spec.payload:
            continue
        total += spec.surprise(value, global_[global_key(key, kind)])
        count += value.numel()
    return spec.surprise_per_weight(total / max(count, 1))


def outliers(scores: torch.Tensor, k: float, min_spread: float = MIN_SPREAD) -> torch.Tensor:
    """Clients whose score exceeds median + k·MAD: True = drop. The MAD is floored at 1% of the
    median and at ``min_spread``, so when most clients changed nothing (MAD 0) a client that
    learned a little is not an outlier."""
    scores = scores.to(torch.float64)
    median = scores.median()
    mad = (scores - median).abs().median()
    spread = torch.clamp(mad, min=max(0.01 * float(median.abs()), min_spread))
    return scores > median + k * spread


def reduce(rule: str, x: torch.Tensor, w: torch.Tensor, *, trim_ratio: float = 0.1, max_share: float = 1.0) -> torch.Tensor:
    """Apply one aggregation rule to stacked client values."""
    if rule in ("mean", "filtered", "bayes"):
        return weighted_mean(x, w)
    if rule == "capped":
        return weighted_mean(x, capped_weights(w, max_share))
    if rule == "median":
        return weighted_median(x, w)
    if rule == "trimmed_mean":
        return trimmed_mean(x, w, trim_ratio)
    raise ValueError(f"unknown aggregation rule {rule!r}; known: {', '.join(RULES)}")


def beta_posterior(
    mean: torch.Tensor, count: int, alpha: torch.Tensor, beta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FedPM's Bayesian aggregation (Isik et al. 2023) for one tensor: each weight's keep-probability
    has a Beta(α, β) prior; ``count`` client masks with ``M = count·mean`` ones (``mean`` the
    example-weighted mean mask: M is the plain count of ones when clients hold equal weights) give
    the posterior α' = α + M, β' = β + count − M, and the global probs are its mode
    (α' − 1) / (α' + β' − 2). Returns (probs, α', β'), float64."""
    ones = count * mean.to(torch.float64)
    alpha = alpha.to(torch.float64) + ones
    beta = beta.to(torch.float64) + (count - ones)
    return (alpha - 1) / (alpha + beta - 2), alpha, beta


def bayes_step(
    reduced: dict[str, torch.Tensor], previous: dict[str, torch.Tensor], kind: str, *, count: int, prior: float,
    reset: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The ``bayes`` rule after the example-weighted mean: bernoulli mask means become posterior
    modes; α and β continue from ``previous`` (the global's ``beta_a``/``beta_b``) unless ``reset``
    (or absent), when they restart at the prior α = β = ``prior``. Heads and other kinds keep the
    mean. Returns (reduced values, posterior state keyed ``beta_a/<global key>``, ``beta_b/…``)."""
    out = dict(reduced)
    state: dict[str, torch.Tensor] = {}
    for key, value in reduced.items():
        gkey = global_key(key, kind)
        if not gkey.startswith("probs/"):
            continue
        alpha, beta = previous.get(f"beta_a/{gkey}"), previous.get(f"beta_b/{gkey}")
        if reset or alpha is None or beta is None:
            alpha = beta = torch.full(value.shape, float(prior), dtype=torch.float64)
        mode, alpha, beta = beta_posterior(value, count, alpha, beta)
        out[key] = mode.float()
        state[f"beta_a/{gkey}"], state[f"beta_b/{gkey}"] = alpha.float(), beta.float()
    return out, state


def finalizer(client_key: str, kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """How a reduced client value becomes the global tensor (keyed by tensor name and kind)."""
    spec = kind_of(kind)
    return spec.finalize if client_key.partition("/")[0] == spec.payload else (lambda reduced: reduced)


def finish(
    reduced: dict[str, torch.Tensor],
    previous: dict[str, torch.Tensor],
    kind: str,
    *,
    server: ServerOptimizer,
    bayes: tuple[int, float, bool] | None = None,
) -> dict[str, torch.Tensor]:
    """Reduced client values -> the next global's tensors, server state included: the ``bayes``
    posterior when ``bayes`` = (client count, prior, reset) is given, then the server optimizer,
    then :func:`finalize`."""
    state: dict[str, torch.Tensor] = {}
    if bayes is not None:
        count, prior, reset = bayes
        reduced, state = bayes_step(reduced, previous, kind, count=count, prior=prior, reset=reset)
    stepped, opt_state = server_opt.server_step(reduced, previous, kind, server)
    return {**finalize(stepped, kind), **state, **opt_state}


def finalize(sums: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """Global tensors from reduced client values."""
    return {global_key(k, kind): finalizer(k, kind)(v) for k, v in sums.items()}


def reduce_stacked(
    clients: list[dict[str, torch.Tensor]], weights: list[float], rule: str, *, trim_ratio: float = 0.1,
    max_share: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Reduce decoded client tensors (all in memory) with one rule, per tensor name."""
    w = torch.tensor(weights, dtype=torch.float64)
    return {
        key: reduce(rule, torch.stack([c[key].float() for c in clients]), w, trim_ratio=trim_ratio, max_share=max_share)
        for key in clients[0]
    }


class RunningMean:
    """Example-weighted mean of client tensors, accumulated one client at a time (memory O(model)).

    Boolean masks are mostly ones (or mostly zeros), so a mask is added as a scalar offset plus
    a sparse correction at its minority positions instead of a dense multiply-add."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.offsets: dict[str, float] = {}
        self.total = 0.0

    def add(self, tensors: dict[str, torch.Tensor], weight: float) -> None:
        for key, value in tensors.items():
            if key not in self.sums:
                self.sums[key] = torch.zeros(value.shape, dtype=torch.float64)
                self.offsets[key] = 0.0
            flat = self.sums[key].view(-1)
            if value.dtype != torch.bool:
                flat.add_(value.reshape(-1).to(torch.float64), alpha=weight)
                continue
            bits = value.reshape(-1).numpy()  # numpy counts and finds nonzeros in bool arrays several times faster
            ones = int(np.count_nonzero(bits))
            if 2 * ones > bits.size:
                self.offsets[key] += weight
                minority, delta = np.flatnonzero(~bits), -weight
            else:
                minority, delta = np.flatnonzero(bits), weight
            flat.index_add_(0, torch.from_numpy(minority), torch.tensor(delta, dtype=torch.float64).expand(len(minority)))
        self.total += weight

    def result(self) -> dict[str, torch.Tensor]:
        return {k: ((v + self.offsets[k]) / self.total).float() for k, v in self.sums.items()}


def round_weights(counts: list[int], rule: str, weighting: str, max_share: float) -> list[float]:
    """The weights of a round's accepted clients, in order: :func:`example_weights` of their
    reported counts, then capped shares under ``capped``. One function for the server and for
    everyone who replays its aggregation (``transport``)."""
    weights = example_weights(counts, weighting)
    if rule == "capped" and len(counts):
        weights = capped_weights(weights, max_share)
    return weights.tolist()


def next_global(
    reduced: dict[str, torch.Tensor], previous: dict[str, torch.Tensor], kind: str, federation, *, rule: str,
    num_clients: int, rnd: int,
) -> dict[str, torch.Tensor]:
    """Round ``rnd``'s next global from its ``num_clients`` accepted clients' reduced values, under a
    ``federation`` config section: the ``bayes`` posterior (prior reset every ``bayes_reset``
    rounds), the server optimizer, ``finalize``. One function for the server and for everyone
    who replays its aggregation (``transport``)."""
    bayes = (num_clients, federation.bayes_prior, rnd % federation.bayes_reset == 0) if rule == "bayes" else None
    return finish(reduced, previous, kind, server=server_opt.from_config(federation), bayes=bayes)
