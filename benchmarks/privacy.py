"""What privacy costs: DP-SGD step time against the plain step, accuracy at several ε, and the
ε that client-level DP gives for a number of clients and rounds.

Prints one JSON object. Modes (``--modes``, default ``step table``):

- ``step``: ``steps.train_client`` of the same client on MiniLM-L6 + SST-2, plain and with
  ``privacy.mode: example`` (σ 1, C 1), run interleaved (plain, private, plain, ...); the ratio is the
  median of paired ratios of the training loops' seconds (``ClientResult.seconds``, without model
  loading). DP batches are Poisson with the same expected size.
- ``table``: no training. Client-level ε (δ = 1e-5, RDP) after R rounds with every client in every
  round, for noise multipliers z, and what that noise does to one weight's global value: std
  z·√2·√K / N for a mask count (K = max_flips), z·√2·C / N for a head entry (clip C), N clients;
  and example-level σ for ε 1, 3, 8 on a 6,735-example client at batch 32 (with PRV's ε of that σ).
  Both of README's "What ε to expect" tables.
- ``accuracy``: ``steps.run`` of a small federated SST-2 run at each ``--epsilons`` (0 = no privacy),
  example-level, final validation accuracy and ε.
- ``client``: ``steps.run`` with ``privacy.mode: client`` at ``--clients`` clients.

    HF_HUB_OFFLINE=1 python benchmarks/privacy.py --modes step table --steps 6 --reps 3
    HF_HUB_OFFLINE=1 python benchmarks/privacy.py --modes accuracy --rounds 3 --clients 4 --steps 20
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def make_config(run_dir: str, args, privacy: dict | None, clients: int):
    from supermask_cli.config import config_from_dict

    raw = {
        "run_dir": run_dir, "seed": 0, "task": "sst2",
        "model": {"name": "packaged:all-MiniLM-L6-v2", "max_length": args.max_length},
        "data": {"source": "local", "train_file": str(DATA / "train.tsv"), "eval_file": str(DATA / "validation.tsv"),
                 "max_train_examples": args.train_examples},
        "mask": {"kind": args.kind},
        "federation": {"num_clients": clients, "rounds": args.rounds},
        "train": {"batch_size": args.batch_size, "micro_batch_size": args.micro_batch, "max_steps": args.steps, "device": "cpu", "head_lr": 3e-3},
        "eval": {"batch_size": 64},
        "privacy": privacy or {},
    }
    return config_from_dict(raw, "benchmarks/privacy.py")


def step_ratio(args, root: str) -> dict:
    from supermask_cli import steps

    private = {"mode": "example", "noise_multiplier": 1.0, "max_grad_norm": 1.0}
    cfgs = {name: make_config(f"{root}/step_{name}", args, p, args.clients) for name, p in (("plain", None), ("dp", private))}
    for cfg in cfgs.values():
        steps.init(cfg)
    seconds: dict[str, list[float]] = {"plain": [], "dp": []}
    for rep in range(args.reps):
        for name, cfg in cfgs.items():
            result = steps.train_client(cfg, 0, rnd=0, out=f"{root}/{name}_{rep}.safetensors", force=True)
            seconds[name].append(result.seconds / result.steps)
    ratios = [d / p for d, p in zip(seconds["dp"], seconds["plain"])]
    return {"ratio_dp_over_plain": statistics.median(ratios), "paired_ratios": ratios,
            "seconds_per_step": {k: statistics.median(v) for k, v in seconds.items()},
            "batch_size": args.batch_size, "micro_batch_size": args.micro_batch, "max_length": args.max_length, "kind": args.kind, "steps": args.steps}


def client_table() -> list[dict]:
    """Client level: ε (δ = 1e-5, RDP) after R rounds at noise multiplier z (README's and
    docs/BENCHMARKS.md's table), and the z a target ε needs, each with the noise it puts on a global."""
    from supermask_cli.privacy import accountant

    rows = []
    for z in (0.5, 1.0, 2.0, 4.0, 8.0):
        for rounds in (1, 10, 50):
            eps = accountant.epsilon("rdp", z, 1.0, rounds, 1e-5)
            rows.append({"z": z, "rounds": rounds, "epsilon": round(eps, 2),
                         **{f"mask_std_N{n}_K1024": round(z * math.sqrt(2 * 1024) / n, 3) for n in (10, 100, 1000)},
                         **{f"head_std_N{n}_C1": round(z * math.sqrt(2) / n, 4) for n in (10, 100, 1000)}})
    for target in (1.0, 3.0, 8.0):
        for rounds in (10, 50):
            z = accountant.noise_multiplier("rdp", target, 1e-5, 1.0, rounds)
            rows.append({"target_epsilon": target, "rounds": rounds, "z": round(z, 3),
                         **{f"mask_std_N{n}_K1024": round(z * math.sqrt(2 * 1024) / n, 3) for n in (10, 100, 1000)}})
    return rows


EXAMPLE_CLIENT_SIZE = 6735  # SST-2's 67,349 training examples over 10 clients
EXAMPLE_BATCH = 32


def example_table() -> list[dict]:
    """Example level (README's "What ε to expect"): the σ DP-SGD needs for ε ∈ {1, 3, 8} (δ = 1e-5,
    RDP) on an SST-2 client of 6,735 examples at batch 32, after 500 and 2,100 steps, and the ε the
    PRV accountant gives for the same σ."""
    from supermask_cli.privacy import accountant

    q = EXAMPLE_BATCH / EXAMPLE_CLIENT_SIZE
    rows = []
    for steps in (500, 2100):
        for target in (1.0, 3.0, 8.0):
            sigma = accountant.noise_multiplier("rdp", target, 1e-5, q, steps)
            rows.append({"steps": steps, "sample_rate": round(q, 5), "target_epsilon": target, "sigma": round(sigma, 3),
                         "prv_epsilon": round(accountant.epsilon("prv", sigma, q, steps, 1e-5), 2)})
    return rows


def accuracy(args, root: str, privacy_for) -> list[dict]:
    from supermask_cli import steps
    from supermask_cli.checkpoint import read_meta
    from supermask_cli.layout import Layout

    rows = []
    for eps in args.epsilons:
        cfg = make_config(f"{root}/acc_{eps}", args, privacy_for(eps), args.clients)
        summaries = steps.run(cfg)
        final = read_meta(Layout(cfg.run_dir).global_path(args.rounds)).privacy
        rows.append({"target_epsilon": eps or None, "accuracy": summaries[-1].metrics.get("accuracy"),
                     "epsilon": final.epsilon if final else None,
                     "accuracy_by_round": [s.metrics.get("accuracy") for s in summaries]})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", nargs="+", default=["step", "table"], choices=["step", "table", "accuracy", "client"])
    parser.add_argument("--kind", default="threshold")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=None, help="train.micro_batch_size (default: one pass per batch)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--train-examples", type=int, default=4000)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0, 8, 3, 1])
    parser.add_argument("--max-flips", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "machine": f"{platform.machine()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}",
                 "torch": torch.__version__, "args": vars(args)}
    with tempfile.TemporaryDirectory() as root:
        if "table" in args.modes:
            out["client_level_table"] = client_table()
            out["example_level_table"] = example_table()
        if "step" in args.modes:
            out["step"] = step_ratio(args, root)
        if "accuracy" in args.modes:
            out["accuracy"] = accuracy(args, root, lambda e: {"mode": "example", "target_epsilon": e, "max_grad_norm": 1.0} if e else None)
        if "client" in args.modes:
            out["client"] = accuracy(args, root, lambda e: {"mode": "client", "target_epsilon": e, "max_flips": args.max_flips} if e else None)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
