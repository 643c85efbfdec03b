"""Statistical properties of the seeded partitions that disjoint-and-covering checks miss."""

from __future__ import annotations

import numpy as np

from supermask_cli.data import partition


def test_dirichlet_gives_every_client_its_fair_share_on_average():
    # Symmetric Dirichlet: each client's expected share of every class is 1 / num_clients.
    labels = np.repeat([0, 1], 200)
    shares = np.array([[len(c) / len(labels) for c in partition(labels, 4, "dirichlet", seed, alpha=1.0)]
                       for seed in range(30)])
    assert np.all(np.abs(shares.mean(0) - 0.25) < 0.08), shares.mean(0)


def test_shards_are_dealt_at_random_so_clients_mix_labels():
    # 2 labels, 10 clients × 2 shards: dealing shards in label order would give every client one label.
    labels = np.repeat([0, 1], 100)
    mixed = [sum(len(np.unique(labels[c])) == 2 for c in partition(labels, 10, "shards", seed, shards_per_client=2))
             for seed in range(5)]
    assert sum(mixed) >= 10, mixed  # about half the clients on average
