"""The Flower deployment against `supermask run`: per-round wall time, bytes per client up and
down, download bits per weight, and whether globals (served and rebuilt from deltas) are
byte-identical. Prints one JSON object.

    python benchmarks/flower.py --config configs/sst2_minilm_offline.yaml \
        --set federation.rounds=4 --set train.max_steps=8 --set data.max_eval_examples=256 --out runs/bench_flower

Needs the Flower environment (scripts/flower_env.sh). Runs the Flower deployment first
(scripts/flower_local.sh), then `run` with the same config and seed in this process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from supermask_cli import checkpoint, steps, transport  # noqa: E402
from supermask_cli.config import load_config  # noqa: E402
from supermask_cli.layout import Layout  # noqa: E402


def sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--out", default="runs/bench_flower")
    parser.add_argument("--round-timeout", default="3600")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    flower_dir, run_dir = out / "flower", out / "run"

    start = time.perf_counter()
    sets = [f"run_dir={flower_dir}", *args.overrides]
    cmd = [str(REPO / "scripts" / "flower_local.sh"), "--config", args.config, "--round-timeout", args.round_timeout]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    flower_total = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"flower_local.sh failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")

    cfg = load_config(args.config, [f"run_dir={run_dir}", *args.overrides])
    start = time.perf_counter()
    summaries = steps.run(cfg)
    run_total = time.perf_counter() - start

    flower_rounds = {r["round"]: r for r in map(json.loads, (flower_dir / "flower" / "rounds.jsonl").read_text().splitlines())}
    layout = Layout(str(flower_dir))
    rows = []
    for s in summaries:
        rnd = s.round
        metrics = json.loads(Path(layout.metrics_path(rnd)).read_text())
        row = {
            "round": rnd,
            "global_identical": sha(layout.global_path(rnd)) == sha(Layout(str(run_dir)).global_path(rnd)),
            "download_bytes": metrics.get("download_bytes"),
            "download_bits_per_weight": metrics.get("download_bits_per_weight"),
            "full_global_bytes": os.path.getsize(layout.global_path(rnd)),
        }
        if rnd > 0:
            previous = checkpoint.load_checkpoint(layout.global_path(rnd - 1))
            fetch = transport.download(cfg, layout, rnd)
            rebuilt = transport.apply_delta(cfg, previous, fetch.data) if fetch.is_delta else fetch.data
            row["rebuilt_from_delta_identical"] = fetch.is_delta and rebuilt == Path(layout.global_path(rnd)).read_bytes()
        fr = flower_rounds.get(rnd)
        if fr is not None:
            row.update(
                flower_wall_s=round(fr["wall_s"], 2),
                run_wall_s=round(s.wall_seconds, 2),
                wall_ratio=round(fr["wall_s"] / s.wall_seconds, 2),
                down_bytes_per_client=statistics.mean(fr["down"].values()),
                up_bytes_per_client=statistics.mean(fr["up"].values()),
                delta_clients=len(fr["delta"]),
            )
        rows.append(row)
    print(json.dumps({
        "config": args.config,
        "overrides": args.overrides,
        "num_weights": checkpoint.read_meta(layout.global_path(0)).num_weights,
        "flower_total_s": round(flower_total, 1),
        "run_total_s": round(run_total, 1),
        "rounds": rows,
    }, indent=2))


if __name__ == "__main__":
    main()
