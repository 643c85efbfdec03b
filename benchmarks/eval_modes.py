"""Bernoulli evaluation modes on one global: ``expected`` (W ⊙ probs, the mean-field / weight-scaling
approximation) against K sampled thinned networks (``sample`` with seeds 0..K-1) and their ensemble.

Trains the global first unless ``--checkpoint`` is given: ``init`` then ``--rounds`` rounds of every
client's ``train-client`` and ``aggregate`` under the config (``--set`` overrides apply). Prints one
JSON object: the accuracy of ``expected``, of each sample, their mean and spread, and of the
ensemble (softmax probabilities averaged over the K samples).

    python benchmarks/eval_modes.py --config configs/sst2_minilm_offline.yaml --out-dir /tmp/eval_modes \
        --set federation.num_clients=2 --set federation.rounds=1 --samples 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from supermask_cli import checkpoint  # noqa: E402
from supermask_cli import steps as api  # noqa: E402
from supermask_cli.config import load_config  # noqa: E402
from supermask_cli.predict import predict  # noqa: E402
from supermask_cli.masked_model import bake_global  # noqa: E402
from supermask_cli.runtime import resolve_device  # noqa: E402


def train_global(cfg) -> str:
    """init, then every client and aggregate for each round; the last global's path."""
    _, cfg = api.init(cfg)
    for rnd in range(cfg.federation.rounds):
        for client in range(cfg.federation.num_clients):
            api.train_client(cfg, client, rnd=rnd)
        result = api.aggregate(cfg, rnd=rnd)
    return result.path


def logits_of(cfg, gl, examples, mode: str, seed: int) -> np.ndarray:
    base = api.load_base(cfg, gl.meta.labels)
    model = bake_global(base, gl, mode, seed=seed)
    device = resolve_device(cfg.train.device)
    model.to(device)
    logits, _ = predict(model, base.tokenizer, examples, batch_size=cfg.eval.batch_size,
                        max_length=cfg.model.max_length, device=device, precision=cfg.train.precision)
    return logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out-dir", required=True, help="run_dir of the training run")
    parser.add_argument("--checkpoint", help="a bernoulli global to evaluate instead of training one")
    parser.add_argument("--samples", type=int, default=8, help="K sampled masks")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    cfg = load_config(args.config, [f"run_dir={args.out_dir}", *args.overrides])
    start = time.perf_counter()
    path = args.checkpoint or train_global(cfg)
    train_seconds = time.perf_counter() - start
    gl = checkpoint.load_checkpoint(path)
    if gl.meta.kind != "bernoulli":
        raise SystemExit(f"{path}: a {gl.meta.kind} global; evaluation modes apply to bernoulli globals")
    cfg = api.resolved(cfg, gl.meta.labels)
    examples = api.eval_examples(cfg, gl.meta.labels)
    labels = np.asarray(examples.labels)

    def accuracy(logits: np.ndarray) -> float:
        return float((logits.argmax(-1) == labels).mean())

    expected = accuracy(logits_of(cfg, gl, examples, "expected", 0))
    sampled, probs = [], []
    for seed in range(args.samples):
        logits = logits_of(cfg, gl, examples, "sample", seed)
        sampled.append(accuracy(logits))
        probs.append(torch.softmax(torch.from_numpy(logits), -1).numpy())
    print(json.dumps({
        "checkpoint": path,
        "round": gl.meta.round,
        "density": gl.density(),
        "eval_examples": len(examples),
        "expected_accuracy": expected,
        "sample_accuracies": sampled,
        "sample_accuracy_mean": statistics.fmean(sampled),
        "sample_accuracy_std": statistics.stdev(sampled) if len(sampled) > 1 else 0.0,
        "ensemble_accuracy": accuracy(np.mean(probs, axis=0)),
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - start,
    }, indent=2))


if __name__ == "__main__":
    main()
