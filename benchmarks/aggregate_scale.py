"""`aggregate` time and peak memory against the number of client files (MiniLM-sized masks).

Initialises a run of the given config with ``federation.num_clients`` = the largest N, writes N
synthetic but valid client uploads (masks sampled from the global's probabilities, the head
perturbed), then times ``aggregate`` over the first N files, each in a fresh process whose peak
RSS is read from ``getrusage``. Prints one JSON object.

    python benchmarks/aggregate_scale.py --config configs/sst2_minilm_offline.yaml \
        --clients 2 10 100 --encoding coded --out-dir /tmp/bench_agg
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from supermask_cli import checkpoint
from supermask_cli import steps  # noqa: E402
from supermask_cli.config import load_config  # noqa: E402
from supermask_cli.layout import Layout  # noqa: E402


def synthesize(cfg, n: int, encoding: str) -> None:
    """Write ``n`` valid client uploads for round 0 of ``cfg.run_dir``."""
    layout = Layout(cfg.run_dir)
    gl = checkpoint.load_checkpoint(layout.global_path(0))
    for client in range(n):
        generator = torch.Generator().manual_seed(client)
        tensors: dict[str, torch.Tensor] = {}
        for key, value in gl.tensors.items():
            group, _, name = key.partition("/")
            if group == "probs":
                tensors[f"mask/{name}"] = torch.bernoulli(value, generator=generator).bool()
            elif group == "mask":
                tensors[key] = value ^ (torch.rand(value.shape, generator=generator) < 0.01)
            else:
                tensors[key] = value + 0.01 * torch.randn(value.shape, generator=generator)
        meta = gl.meta.model_copy(
            update={"role": "client", "client": client, "num_examples": 100 + client, "parent_digest": gl.digest}
        )
        if meta.kind == "threshold" and encoding == "coded":
            meta = meta.model_copy(update={"coding_flip_rate": 0.01})
        meta = meta.model_copy(update={"encoding": encoding if meta.kind != "scaling" else "float"})
        stored = checkpoint.encode_tensors(meta, tensors, gl)
        meta = meta.model_copy(update={"mask_bits": checkpoint.payload_bits(stored)})
        checkpoint.save_checkpoint(layout.client_path(0, client), meta, stored, force=True)


def child(config: str, overrides: list[str], n: int, rule: str) -> None:
    """Aggregate the first ``n`` client files in this process; print time and peak RSS."""
    cfg = load_config(config, overrides)
    layout = Layout(cfg.run_dir)
    paths = layout.client_files(0)[:n]
    out = os.path.join(cfg.run_dir, f"global_{n}_{rule}.safetensors")
    start = time.perf_counter()
    steps.aggregate(cfg, rnd=0, client_paths=paths, out=out, force=True, rule=rule)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"clients": n, "rule": rule, "seconds": seconds, "peak_rss_mib": peak_mib}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 10, 100])
    parser.add_argument("--rules", nargs="+", default=["mean"])
    parser.add_argument("--encoding", default="coded", choices=["coded", "sparse", "packed"])
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rule", default="mean", help=argparse.SUPPRESS)
    args = parser.parse_args()
    overrides = [*args.overrides, f"run_dir={args.out_dir}", f"federation.num_clients={max(args.clients)}"]
    if args.child is not None:
        child(args.config, overrides, args.child, args.rule)
        return
    cfg = load_config(args.config, overrides)
    _, cfg = steps.init(cfg, force=True)
    start = time.perf_counter()
    synthesize(cfg, max(args.clients), args.encoding)
    print(f"synthesized {max(args.clients)} uploads in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    results = []
    for rule in args.rules:
        for n in args.clients:
            command = [sys.executable, __file__, "--config", args.config, "--out-dir", args.out_dir,
                       "--child", str(n), "--rule", rule, "--clients", *map(str, args.clients)]
            for o in args.overrides:
                command += ["--set", o]
            line = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results.append(json.loads(line))
            print(line, file=sys.stderr, flush=True)
    size = os.path.getsize(Layout(args.out_dir).client_path(0, 0))
    global_size = os.path.getsize(Layout(args.out_dir).global_path(0))
    json.dump({"config": args.config, "overrides": args.overrides, "encoding": args.encoding,
               "num_weights": checkpoint.read_meta(Layout(args.out_dir).global_path(0)).num_weights,
               "global_file_bytes": global_size, "client_file_bytes": size, "results": results},
              sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
