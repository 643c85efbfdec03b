"""``eval``: score a global on the eval data and write ``metrics.json``."""

from __future__ import annotations

import json
import time
from typing import Any

from .. import storage, transport
from ..config import Config
from ..layout import Layout
from ..mask.kinds import kind_of
from ..masked_model import bake_global
from ..predict import evaluate_model
from ..privacy import ledger
from ..runlog import write_metrics_log
from ..runtime import resolve_device
from .checks import (
    check_base_matches,
    derive_seed,
    latest_round,
    load_base,
    load_global,
    refuse_existing,
)
from .pool import eval_examples, metric_names, resolved

EVAL_STREAM = -1  # derive_seed(seed, round, EVAL_STREAM): the sampled mask of `mask.eval: sample`


def evaluate(
    cfg: Config,
    *,
    rnd: int | None = None,
    checkpoint_path: str | None = None,
    out: str | None = None,
    force: bool = False,
) -> tuple[dict[str, Any], str]:
    """Evaluate a global file on the eval data; writes ``metrics.json`` and returns (metrics, its path)."""
    layout = Layout(cfg.run_dir)
    if checkpoint_path is None:
        rnd = latest_round(layout) if rnd is None else rnd
        checkpoint_path = layout.global_path(rnd)
    gl = load_global(checkpoint_path)
    rnd = gl.meta.round
    cfg = resolved(cfg, gl.meta.labels, gl.meta.pool)
    in_run = checkpoint_path == layout.global_path(rnd)
    path = out or (layout.metrics_path(rnd) if in_run else Layout.metrics_beside(checkpoint_path))
    refuse_existing(path, force)
    examples = eval_examples(cfg, gl.meta.labels)
    base = load_base(cfg, gl.meta.labels)
    check_base_matches(base, gl)
    model = bake_global(base, gl, cfg.mask.eval, seed=derive_seed(cfg.seed, rnd, EVAL_STREAM))
    device = resolve_device(cfg.train.device)
    model.to(device)
    start = time.perf_counter()
    scores = evaluate_model(
        model, base.tokenizer, examples, metric_names(cfg),
        batch_size=cfg.eval.batch_size, max_length=cfg.model.max_length, device=device,
        precision=cfg.train.precision, description=f"eval round {rnd}",
    )
    seconds = time.perf_counter() - start
    agg = gl.meta.aggregation
    metrics: dict[str, Any] = {
        "round": rnd,
        "num_examples": len(examples),
        **scores,
        "density": gl.density(),
        "kind": gl.meta.kind,
        "eval_mode": cfg.mask.eval if kind_of(gl.meta.kind).probabilistic else "mask",
        "train_examples": gl.meta.num_examples,
        "clients": len(agg.clients) if agg else 0,
        "dropped": len(agg.dropped) if agg else 0,
        "missing": len(agg.missing) if agg else 0,
        "eval_seconds": seconds,
        "eval_examples_per_s": len(examples) / max(seconds, 1e-9),
        "checkpoint_digest": gl.digest,
        **ledger.metrics_fields(cfg, gl.meta),
    }
    if checkpoint_path == layout.global_path(rnd):  # what a client holding the previous global fetches
        metrics.update(transport.download_metrics(cfg, layout, rnd))
    storage.write_text_atomic(path, json.dumps(metrics, indent=2) + "\n", force=force)
    if path == layout.metrics_path(rnd):
        write_metrics_log(layout)
    return metrics, path
