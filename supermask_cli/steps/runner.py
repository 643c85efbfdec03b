"""``run``: every step of every round on this machine; steps whose output exists are skipped (resume)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import checkpoint, storage
from ..config import Config
from ..layout import Layout
from ..privacy.policy import ClientPolicy, PolicyRefusal
from ..runlog import AggregateResult, read_metrics, upload_summary
from ..tracking import TensorBoardLog, mlflow_for
from .aggregation import aggregate
from .evaluation import evaluate
from .initialize import init
from .participants import write_participants
from .pool import metric_names, resolved
from . import admission, secure
from .checks import load_global
from .training import ClientResult, train_client


@dataclass
class RoundSummary:
    round: int
    metrics: dict[str, Any]
    upload: AggregateResult | None = None
    wall_seconds: float = 0.0
    clients: list[ClientResult] = field(default_factory=list)

    def row(self, main_metric: str) -> dict[str, Any]:
        up = self.upload
        return {
            "round": self.round,
            main_metric: self.metrics.get(main_metric),
            "loss": self.metrics.get("loss"),
            "density": self.metrics.get("density"),
            "upload_bytes": up.upload_bytes if up else None,
            "bits_per_weight": up.bits_per_weight if up else None,
            "clients": len(up.clients) if up else None,
            "wall_s": self.wall_seconds,
        }


def _train_round(cfg: Config, layout: Layout, rnd: int, on_client: Callable[[ClientResult], None] | None,
                 policies: dict[int, ClientPolicy] | None = None,
                 on_refused: Callable[[int, str], None] | None = None,
                 on_rejected: Callable[[int, str], None] | None = None) -> list[ClientResult]:
    """Train the round's sampled clients whose upload is not there yet (an upload left by an
    earlier run is checked first; one that fails moves to ``rejected/`` and its client trains
    again); a client whose privacy policy refuses the round uploads nothing (as it would on its
    own machine)."""
    results = []
    clients = write_participants(layout, cfg, rnd)
    if cfg.secure_aggregation.enabled:  # every client's keys, then every client's sealed shares
        for client in clients:
            secure.publish_keys(cfg, client, rnd)
        for client in clients:
            secure.share_keys(cfg, client, rnd)
    if any(storage.exists(layout.client_path(rnd, c)) for c in clients):  # a resume trusts no file it did not check
        gl = load_global(layout.global_path(rnd))
        for client, reason in admission.recheck_present(cfg, layout, gl, rnd, clients).items():
            if on_rejected:
                on_rejected(client, reason)
    for client in clients:
        if storage.exists(layout.client_path(rnd, client)):
            continue
        try:
            result = train_client(cfg, client, rnd=rnd, policy=(policies or {}).get(client))
        except PolicyRefusal as exc:
            if on_refused:
                on_refused(client, str(exc))
            continue
        results.append(result)
        if on_client:
            on_client(result)
    return results


def run(
    cfg: Config,
    *,
    on_client: Callable[[ClientResult], None] | None = None,
    on_round: Callable[[RoundSummary], None] | None = None,
    policies: dict[int, ClientPolicy] | None = None,
    on_refused: Callable[[int, str], None] | None = None,
    on_rejected: Callable[[int, str], None] | None = None,
) -> list[RoundSummary]:
    """Every step of every round on this machine; steps whose output exists are skipped (resume).
    ``policies``: each simulated client's privacy policy (``--privacy-policies``), by client id.
    ``on_refused``: a client's policy refused the round; ``on_rejected``: an upload left by an
    earlier run failed its check (moved to ``rejected/``; the client trains again)."""
    layout = Layout(cfg.run_dir)
    if not storage.exists(layout.global_path(0)):
        _, cfg = init(cfg)
    else:
        meta = checkpoint.read_meta(layout.global_path(0))
        cfg = resolved(cfg, meta.labels, meta.pool)
    summaries: list[RoundSummary] = []
    board = TensorBoardLog(storage.join(cfg.run_dir, "tensorboard")) if cfg.tensorboard else None
    tracker = mlflow_for(cfg)
    for rnd in range(cfg.federation.rounds + 1):
        start = time.perf_counter()
        if storage.exists(layout.metrics_path(rnd)):
            metrics = read_metrics(layout.metrics_path(rnd))
        else:
            metrics, _ = evaluate(cfg, rnd=rnd)
        summary = RoundSummary(round=rnd, metrics=metrics)
        if rnd < cfg.federation.rounds:
            if not storage.exists(layout.global_path(rnd + 1)):
                summary.clients = _train_round(cfg, layout, rnd, on_client, policies, on_refused, on_rejected)
                summary.upload = aggregate(cfg, rnd=rnd)
                if summary.upload.waiting:  # secure aggregation: the survivors answer the list, then the round completes
                    for client in secure.read_survivors(secure.open_secure_round(cfg, rnd))["survivors"]:
                        secure.reveal(cfg, client, rnd)
                    summary.upload = aggregate(cfg, rnd=rnd)
            else:
                summary.upload = upload_summary(layout, rnd)
        summary.wall_seconds = time.perf_counter() - start
        summaries.append(summary)
        if board:
            board.scalars("eval", summary.metrics, rnd)
            board.scalars("round", summary.row(metric_names(cfg)[0]), rnd)
            for client in summary.clients if cfg.privacy.mode == "none" else []:  # no noise covers these
                board.scalars(f"client_{client.client:03d}", vars(client), rnd)
        if tracker:
            tracker.scalars("eval", summary.metrics, rnd)
            tracker.scalars("round", summary.row(metric_names(cfg)[0]), rnd)
        if on_round:
            on_round(summary)
    if board:
        board.close()
    if tracker:
        tracker.finish(cfg.run_dir)
    return summaries
