"""``<run_dir>/round_RRR/participants.json``: the clients sampled for a round, written before it starts."""

from __future__ import annotations

import json

from .. import storage
from ..config import Config
from ..errors import SupermaskError
from ..layout import Layout
from ..sampling import participants


def sampled(cfg: Config, rnd: int) -> list[int]:
    """Round ``rnd``'s participants, from (seed, round) alone."""
    fed = cfg.federation
    return participants(fed.num_clients, fed.clients_per_round, cfg.seed, rnd)


def write_participants(layout: Layout, cfg: Config, rnd: int) -> list[int]:
    """Write round ``rnd``'s participants file (once; an identical file is left as it is)."""
    clients = sampled(cfg, rnd)
    text = json.dumps({"round": rnd, "clients": clients}) + "\n"
    path = layout.participants_path(rnd)
    if storage.exists(path):
        if read_participants(path) != clients:
            raise SupermaskError(f"'{path}' lists other clients than this config samples for round {rnd}")
        return clients
    storage.write_text_atomic(path, text, force=True)
    return clients


def read_participants(path: str) -> list[int]:
    """A participants file: a JSON list of client ids or an object with a ``clients`` list."""
    try:
        value = json.loads(storage.read_bytes(path, 1 << 20, what="participants file"))
    except ValueError:
        raise SupermaskError(f"'{path}': not JSON") from None
    clients = value.get("clients") if isinstance(value, dict) else value
    if not isinstance(clients, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in clients):
        raise SupermaskError(f"'{path}': expected a list of client ids (or an object with a 'clients' list)")
    return clients
