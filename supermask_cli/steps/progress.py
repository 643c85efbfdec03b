"""Which steps of a run are done: read from the run directory (a path or fsspec URL), never written.

Launchers (``scripts/federated_rounds.sh``, ``supermask slurm``) ask this instead of testing files
themselves, so a bucket run_dir works the same as a local one."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .. import storage
from ..config import Config
from ..layout import Layout
from .participants import sampled


@dataclass(frozen=True)
class RoundProgress:
    round: int
    has_global: bool  # round_RRR/global.safetensors
    has_metrics: bool  # round_RRR/metrics.json
    has_participants_file: bool  # round_RRR/participants.json
    participants: list[int]  # sampled for this round, from (seed, round): participants.json's list
    clients_done: list[int]  # client ids with an upload in round_RRR/clients/
    clients_missing: list[int]  # participants without an upload
    # secure aggregation only: client ids with keys, sealed shares and unmask answers in
    # round_RRR/secagg/, and the survivor list (null until aggregate writes it)
    secure_aggregation: dict | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        if d["secure_aggregation"] is None:
            del d["secure_aggregation"]
        return {"round": d.pop("round"), "global": d.pop("has_global"), "metrics": d.pop("has_metrics"),
                "participants_file": d.pop("has_participants_file"), **d}


def round_progress(cfg: Config, rnd: int) -> RoundProgress:
    layout = Layout(cfg.run_dir)
    done = sorted(layout.uploads(rnd))
    wanted = sampled(cfg, rnd)
    secure = None
    if cfg.secure_aggregation.enabled:
        listed = layout.survivors_path(rnd)
        survivors = json.loads(storage.read_bytes(listed, 1 << 24))["survivors"] if storage.exists(listed) else None
        secure = {step: sorted(layout.secagg_files(rnd, step)) for step in ("keys", "shares", "unmask")}
        secure["survivors"] = survivors
    return RoundProgress(
        round=rnd,
        has_global=storage.exists(layout.global_path(rnd)),
        has_metrics=storage.exists(layout.metrics_path(rnd)),
        has_participants_file=storage.exists(layout.participants_path(rnd)),
        participants=wanted,
        clients_done=done,
        clients_missing=[c for c in wanted if c not in done],
        secure_aggregation=secure,
    )


def progress(cfg: Config, rnd: int | None = None, rounds: int | None = None) -> list[RoundProgress]:
    """Round ``rnd`` alone, or rounds 0..``rounds`` (default ``federation.rounds``) inclusive:
    the last round has a global and metrics but no clients."""
    if rnd is not None:
        return [round_progress(cfg, rnd)]
    last = cfg.federation.rounds if rounds is None else rounds
    return [round_progress(cfg, r) for r in range(last + 1)]
