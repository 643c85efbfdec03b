"""Wall time of a whole run as a Slurm chain (`supermask slurm`) against `supermask run`.

Runs the same config twice, in two fresh run dirs: `supermask run` (one process), then
`supermask slurm` (one process per step, dependencies in Slurm) timed from submission until no
job of the chain is queued. Needs a running Slurm (scripts/dev/slurm-up.sh). Prints one JSON
object: seconds of each, per round, their ratio, and whether the final globals are identical.

    python benchmarks/slurm_overhead.py --config configs/sst2_minilm_offline.yaml --out-dir /tmp/bench_slurm \
        --set federation.num_clients=2 --set federation.rounds=1 --set train.max_steps=8
    python benchmarks/slurm_overhead.py --tiny --out-dir /tmp/bench_slurm_tiny   # the tests' tiny BERT, 3 clients x 2 rounds
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def tiny_config(out_dir: Path) -> Path:
    """The tests' tiny BERT and data (tests/conftest.py), 3 clients x 2 rounds, on CPU."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_tiny_model, tiny_config_dict, write_tiny_data

    model = build_tiny_model(out_dir / "tiny_bert")
    raw = tiny_config_dict(out_dir / "unused", model, write_tiny_data(out_dir), kind="bernoulli")
    raw["train"]["device"] = "cpu"
    path = out_dir / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "supermask_cli", *args], check=True, stdout=subprocess.DEVNULL)


def wait_for(ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", ",".join(ids)], capture_output=True, text=True)
        if queued.returncode == 0 and not queued.stdout.strip():
            return
        time.sleep(0.5)
    raise SystemExit(f"jobs {ids} still queued after {timeout} s")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path)
    parser.add_argument("--tiny", action="store_true", help="Use the tests' tiny model (3 clients x 2 rounds).")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    config = (tiny_config(args.out_dir) if args.tiny else args.config).resolve()
    sets = [a for s in args.sets for a in ("--set", s)]
    rounds = yaml.safe_load(config.read_text()).get("federation", {}).get("rounds", 10)
    for s in args.sets:
        if s.startswith("federation.rounds="):
            rounds = int(s.split("=", 1)[1])

    run_dir, slurm_dir = args.out_dir / "run", args.out_dir / "slurm_chain"
    start = time.perf_counter()
    cli("run", "--config", str(config), *sets, "--set", f"run_dir={run_dir}")
    run_s = time.perf_counter() - start

    start = time.perf_counter()
    cli("slurm", "--config", str(config), *sets, "--set", f"run_dir={slurm_dir}", "--gpus-per-client", "0")
    jobs = json.loads((slurm_dir / "slurm" / "jobs.json").read_text())["submissions"][-1]["jobs"]
    wait_for([j["id"] for j in jobs], args.timeout)
    slurm_s = time.perf_counter() - start

    final = f"round_{rounds:03d}/global.safetensors"
    print(json.dumps({
        "config": str(config), "overrides": args.sets, "rounds": rounds, "jobs": len(jobs),
        "run_s": round(run_s, 1), "slurm_s": round(slurm_s, 1),
        "run_s_per_round": round(run_s / rounds, 1), "slurm_s_per_round": round(slurm_s / rounds, 1),
        "ratio": round(slurm_s / run_s, 2),
        "identical_final_global": sha(run_dir / final) == sha(slurm_dir / final),
        "machine": f"{platform.node()} {os.cpu_count()} CPUs", "load_avg_1m_at_end": round(os.getloadavg()[0], 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }))


if __name__ == "__main__":
    main()
