"""One process playing every client and the server of one round, in memory: the protocol end to
end for tests and for cost measurements with many simulated participants. The file-based steps
compose the same functions."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from . import agreement, masking, recovery, sharing
from .agreement import Context


@dataclass
class Client:
    id: int
    channel_private: bytes = field(default_factory=agreement.new_private_key)
    mask_private: bytes = field(default_factory=agreement.new_private_key)
    self_seed: bytes = field(default_factory=lambda: os.urandom(32))
    holdings: dict[int, dict[str, bytes]] = field(default_factory=dict)


@dataclass
class Round:
    ctx: Context
    t: int
    clients: dict[int, Client]
    sealed: dict[tuple[int, int], bytes] = field(default_factory=dict)
    digests: dict[tuple[str, int, int], str] = field(default_factory=dict)

    @property
    def participants(self) -> list[int]:
        return sorted(self.clients)

    def public(self, client: int) -> tuple[bytes, bytes]:
        c = self.clients[client]
        return agreement.public_key(c.channel_private), agreement.public_key(c.mask_private)


def setup(ctx: Context, participants: list[int], t: int) -> Round:
    """Keys and encrypted shares of every participant, each delivered and opened by its holder."""
    rnd = Round(ctx, t, {i: Client(i) for i in participants})
    n = len(participants)
    for i, client in rnd.clients.items():
        self_shares = sharing.split(client.self_seed, t, n)
        pair_shares = sharing.split(client.mask_private, t, n)
        for k, j in enumerate(rnd.participants):
            plain = self_shares[k] + pair_shares[k]
            rnd.digests[("self", i, j)] = sharing.share_digest(ctx, "self", i, j, self_shares[k])
            rnd.digests[("pair", i, j)] = sharing.share_digest(ctx, "pair", i, j, pair_shares[k])
            key = agreement.channel_key(client.channel_private, rnd.public(j)[0], ctx, i, j)
            rnd.sealed[(i, j)] = agreement.seal(key, plain, ctx, i, j)
    for (i, j), blob in rnd.sealed.items():
        deliver(rnd, i, j, blob)
    return rnd


def deliver(rnd: Round, sender: int, recipient: int, blob: bytes) -> None:
    key = agreement.channel_key(rnd.clients[recipient].channel_private, rnd.public(sender)[0], rnd.ctx, sender, recipient)
    plain = agreement.open_sealed(key, blob, rnd.ctx, sender, recipient)
    rnd.clients[recipient].holdings[sender] = {"self": plain[:32], "pair": plain[32:]}


def masked_input(rnd: Round, me: int, x: dict[str, np.ndarray], bits: dict[str, int]) -> dict[str, np.ndarray]:
    client = rnd.clients[me]
    seeds = {j: agreement.pair_seed(client.mask_private, rnd.public(j)[1], rnd.ctx, me, j)
             for j in rnd.participants if j != me}
    return masking.mask(x, bits, me, client.self_seed, seeds)


def run(ctx: Context, inputs: dict[int, dict[str, np.ndarray]], bits: dict[str, int], t: int,
        dropped: set[int] = frozenset(), silent: set[int] = frozenset()) -> dict[str, np.ndarray]:
    """Σ x_i over the survivors, through the whole protocol. ``dropped`` never upload;
    ``silent`` upload but send no unmask answer."""
    rnd = setup(ctx, sorted(inputs), t)
    uploads = {i: masked_input(rnd, i, x, bits) for i, x in inputs.items() if i not in dropped}
    survivors = set(uploads)
    answers = {i: recovery.answer(ctx, i, t, rnd.clients[i].holdings, survivors, set(inputs) - survivors)[0]
               for i in survivors - set(silent)}
    mask_public = {i: rnd.public(i)[1] for i in rnd.participants}
    self_seeds, pairs = recovery.recover(ctx, t, rnd.participants, survivors, set(inputs) - survivors, answers,
                                         rnd.digests, mask_public)
    return masking.unmask(masking.add_inputs(uploads, bits), bits, self_seeds, pairs)
