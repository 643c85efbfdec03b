"""Byzantine clients: final accuracy of each aggregation rule when some clients upload adversarial masks.

Every round, the honest clients train as usual; the attackers' files are then replaced by valid
files (right metadata, digests and shapes) whose masks are ``random`` (fair coin flips) or
``inverted`` (the honest mask with every bit flipped). Prints one JSON object: the clean run
(mean, no attackers) and, per attack, the final metric of mean / median / trimmed_mean / capped.

    python benchmarks/robust.py --config configs/sst2_minilm_offline.yaml --set federation.num_clients=10 \
        --set federation.rounds=2 --set train.max_steps=16 --attackers 8 9 --out-dir /tmp/bench_robust
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from supermask_cli import checkpoint
from supermask_cli import steps  # noqa: E402
from supermask_cli.config import Config, load_config  # noqa: E402
from supermask_cli.layout import Layout  # noqa: E402


def attack(path: str, gl: checkpoint.Checkpoint, how: str, seed: int) -> None:
    """Rewrite a client file in place with an adversarial but well-formed mask."""
    ckpt = checkpoint.load_checkpoint(path, reference=gl)
    generator = torch.Generator().manual_seed(seed)
    tensors = dict(ckpt.tensors)
    for key, value in ckpt.tensors.items():
        if key.startswith("mask/"):
            tensors[key] = (torch.rand(value.shape, generator=generator) < 0.5) if how == "random" else ~value
    meta = ckpt.meta.model_copy(update={"encoding": "packed", "coding_flip_rate": None})
    stored = checkpoint.encode_tensors(meta, tensors, gl)
    meta = meta.model_copy(update={"mask_bits": checkpoint.payload_bits(stored)})
    checkpoint.save_checkpoint(path, meta, stored, force=True)


def federated(cfg: Config, rule: str, attackers: list[int], how: str | None, cache: dict[str, str]) -> dict:
    """All rounds with ``rule``; attackers' uploads replaced each round. Returns final metrics.

    Training is deterministic, so clients of a global already seen (same digest) are copied
    from ``cache`` (global digest -> clients dir) instead of retrained."""
    layout = Layout(cfg.run_dir)
    _, cfg = steps.init(cfg)
    for rnd in range(cfg.federation.rounds):
        digest = checkpoint.load_checkpoint(layout.global_path(rnd)).digest
        if digest in cache:
            shutil.copytree(cache[digest], layout.clients_dir(rnd))
        else:
            for client in range(cfg.federation.num_clients):
                steps.train_client(cfg, client, rnd=rnd)
            cache[digest] = os.path.join(cfg.run_dir, f"clean_clients_{rnd:03d}")
            shutil.copytree(layout.clients_dir(rnd), cache[digest])
        if how is not None:
            gl = checkpoint.load_checkpoint(layout.global_path(rnd))
            for client in attackers:
                attack(layout.client_path(rnd, client), gl, how, seed=1000 * rnd + client)
        steps.aggregate(cfg, rnd=rnd, rule=rule)
    metrics, _ = steps.evaluate(cfg, rnd=cfg.federation.rounds)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--attackers", type=int, nargs="+", default=[8, 9])
    parser.add_argument("--attacks", nargs="+", default=["random", "inverted"])
    parser.add_argument("--rules", nargs="+", default=["mean", "median", "trimmed_mean", "capped"])
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    base = load_config(args.config, args.overrides)
    metric = steps.metric_names(base)[0]
    results: dict = {"config": args.config, "overrides": args.overrides, "attackers": args.attackers, "metric": metric}
    start = time.perf_counter()
    cache: dict[str, str] = {}
    runs = [("clean", "mean", None)] + [(f"{how}/{rule}", rule, how) for how in args.attacks for rule in args.rules]
    for name, rule, how in runs:
        run_dir = os.path.join(args.out_dir, name.replace("/", "_"))
        if os.path.exists(run_dir):
            raise SystemExit(f"{run_dir} exists; pass a fresh --out-dir")
        cfg = base.model_copy(update={"run_dir": run_dir})
        metrics = federated(cfg, rule, args.attackers, how, cache)
        results[name] = metrics[metric]
        print(f"{name}: {metric} {metrics[metric]:.4f}", file=sys.stderr, flush=True)
    results["seconds"] = time.perf_counter() - start
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
