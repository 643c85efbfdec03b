"""The one reducer: a round's accepted client tensors -> the next round's global tensors.

Everyone who computes a global goes through :func:`next_global_tensors`: the server
(``steps.aggregate``, which every launcher calls) and every receiver that rebuilds a global from
a compact download (``transport``). It chooses the path from the rule and the privacy mode:

- ``privacy.mode: client``: bounded contributions plus noise (``privacy.client_level``), all
  clients in memory;
- linear rules (``rules.STREAMING_RULES``): :class:`rules.RunningMean`, one client at a time, so
  memory stays O(model) however many clients a round has;
- the others (``median``, ``trimmed_mean``): every client stacked in memory;
- secure aggregation (:func:`next_global_masked`): the survivors' masked uploads summed mod 2^k
  one at a time, unmasked, decoded into the weighted means.

The weights come from the clients' example counts (``federation.weighting``, capped shares under
``capped``); then the ``bayes`` posterior, the server optimizer and the finalizers
(``rules.next_global``).

Clients are read through ``load(i)``, in order, each exactly once: a caller that validates files
while they are read raises :class:`Rejected` from ``load`` to have the round reduced again
without that client (the weights depend on who is accepted).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .config import Config
from .privacy import client_level
from .secagg import masking, packing
from .secagg import upload as secagg_upload
from .rules import (
    STREAMING_RULES,
    RunningMean,
    next_global,
    reduce_stacked,
    round_weights,
)

Tensors = dict[str, torch.Tensor]


class Rejected(Exception):
    """Raised by a ``load`` callback: the client at ``index`` cannot be used in this round."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index


def reduce_clients(load: Callable[[int], Tensors], counts: list[int], previous: Tensors, kind: str, cfg: Config,
                   *, rule: str) -> Tensors:
    """The clients' reduced values, keyed like a client file (before the server step and the
    finalizers): see the module docstring for the path taken."""
    fed = cfg.federation
    weights = round_weights(counts, rule, fed.weighting, fed.max_client_share)
    if cfg.privacy.mode == "client":
        return client_level.aggregate(cfg, kind, previous, [load(i) for i in range(len(counts))])
    if rule in STREAMING_RULES:
        running = RunningMean()
        for i, weight in enumerate(weights):
            running.add(load(i), weight)
        return running.result()
    return reduce_stacked([load(i) for i in range(len(counts))], weights, rule, trim_ratio=fed.trim_ratio)


def next_global_tensors(load: Callable[[int], Tensors], counts: list[int], previous: Tensors, kind: str, cfg: Config,
                        *, rule: str, rnd: int) -> Tensors:
    """Round ``rnd``'s accepted clients (``counts[i]`` examples each, tensors from ``load(i)``) and
    its global's tensors ``previous`` -> round ``rnd + 1``'s global tensors, server state included."""
    reduced = reduce_clients(load, counts, previous, kind, cfg, rule=rule)
    return next_global(reduced, previous, kind, cfg.federation, rule=rule, num_clients=len(counts), rnd=rnd)


def next_global_masked(load: Callable[[int], dict[str, torch.Tensor]], count: int, previous: Tensors, kind: str, cfg: Config,
                       *, bits: dict[str, int], total_weight: int, shapes: dict[str, tuple[int, ...]],
                       unmask: Callable[[dict], dict], rule: str, rnd: int) -> Tensors:
    """Secure aggregation's path (``secure_aggregation.enabled``): the ``count`` survivors' masked
    uploads (``load(i)``: ``masked/<key>`` k-bit streams) added mod 2^k, ``unmask``-ed with the
    round's recovered seeds into the plain integer sums, decoded into the weighted means (÷ the
    survivors' ``total_weight``; masks bit-identical to :class:`rules.RunningMean`), then the same
    ``bayes`` posterior, server optimizer and finalizers as every other path."""
    total: dict = {}
    for i in range(count):
        words = {key: packing.unpack(stream.numpy(), math.prod(shapes[key]), bits[key], what=f"masked/{key}")
                 for key, stream in ((k.removeprefix("masked/"), v) for k, v in load(i).items())}
        total = words if not total else masking.add_inputs({0: total, 1: words}, bits)
    plain = unmask(total)
    if cfg.privacy.mode == "client":  # the clients bounded themselves; the noise goes on the unmasked sums
        reduced = client_level.aggregate_sums(cfg, kind, previous, count, secagg_upload.decode_sums(plain, bits, shapes))
    else:
        reduced = secagg_upload.decode_means(plain, bits, total_weight, shapes)
    return next_global(reduced, previous, kind, cfg.federation, rule=rule, num_clients=count, rnd=rnd)
