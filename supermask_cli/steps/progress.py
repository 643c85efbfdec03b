"""Which steps of a run are done: read from the run directory (a path or fsspec URL), never written.

Launchers (``scripts/federated_rounds.sh``, ``supermask slurm``) ask this instead of testing files
themselves, so a bucket run_dir works the same as a local one."""

from __future__ import annotations

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

    def as_dict(self) -> dict:
        d = asdict(self)
        return {"round": d.pop("round"), "global": d.pop("has_global"), "metrics": d.pop("has_metrics"),
                "participants_file": d.pop("has_participants_file"), **d}


def round_progress(cfg: Config, rnd: int) -> RoundProgress:
    layout = Layout(cfg.run_dir)
    done = sorted(layout.uploads(rnd))
    wanted = sampled(cfg, rnd)
    return RoundProgress(
        round=rnd,
        has_global=storage.exists(layout.global_path(rnd)),
        has_metrics=storage.exists(layout.metrics_path(rnd)),
        has_participants_file=storage.exists(layout.participants_path(rnd)),
        participants=wanted,
        clients_done=done,
        clients_missing=[c for c in wanted if c not in done],
    )


def progress(cfg: Config, rnd: int | None = None, rounds: int | None = None) -> list[RoundProgress]:
    """Round ``rnd`` alone, or rounds 0..``rounds`` (default ``federation.rounds``) inclusive:
    the last round has a global and metrics but no clients."""
    if rnd is not None:
        return [round_progress(cfg, rnd)]
    last = cfg.federation.rounds if rounds is None else rounds
    return [round_progress(cfg, r) for r in range(last + 1)]
