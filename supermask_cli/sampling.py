"""Which clients take part in a round: a pure function of (seed, round), the same for every launcher."""

from __future__ import annotations

import hashlib


def _rank(seed: int, rnd: int, client: int) -> bytes:
    return hashlib.sha256(f"supermask-participants:{seed}:{rnd}:{client}".encode()).digest()


def participants(num_clients: int, clients_per_round: int | None, seed: int, rnd: int) -> list[int]:
    """The sorted client ids sampled for round ``rnd``: all clients when ``clients_per_round`` is
    None (or not smaller than ``num_clients``), else the ``clients_per_round`` clients whose
    SHA-256 rank of (seed, round, client) is smallest — uniform without replacement, independent
    across rounds, and stable across machines, Python and numpy versions."""
    if clients_per_round is None or clients_per_round >= num_clients:
        return list(range(num_clients))
    if clients_per_round < 1:
        raise ValueError(f"clients_per_round must be at least 1, got {clients_per_round}")
    ranked = sorted(range(num_clients), key=lambda c: _rank(seed, rnd, c))
    return sorted(ranked[:clients_per_round])
