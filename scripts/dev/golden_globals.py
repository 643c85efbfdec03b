"""SHA-256 of every round global of a fixed set of tiny-model runs (and optionally the MiniLM quick
start's round 1), as JSON: run it before and after a refactor that must not change behaviour.

    python scripts/dev/golden_globals.py --out before.json            # on the old commit
    python scripts/dev/golden_globals.py --compare before.json        # on the new one: exit 1 on a difference
    python scripts/dev/golden_globals.py --minilm --out before.json   # + quick start round 1 (~4 min)

Runs happen in one fixed folder (``--work``) because the tiny model's path is recorded in every
file's metadata: two invocations in different folders differ in those bytes alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

import yaml  # noqa: E402
from conftest import build_tiny_model, tiny_config_dict, write_tiny_data  # noqa: E402

# (name, kind, overrides): every reduction path (streaming mean, stacked median/trimmed, filtered,
# bayes, server optimizers, sampling, every upload encoding)
VARIANTS = [
    ("bernoulli_mean", "bernoulli", {}),
    ("threshold_mean", "threshold", {}),
    ("scaling_mean", "scaling", {}),
    ("bernoulli_median", "bernoulli", {"federation": {"aggregator": "median"}}),
    ("threshold_trimmed", "threshold", {"federation": {"aggregator": "trimmed_mean"}}),
    ("scaling_trimmed", "scaling", {"federation": {"aggregator": "trimmed_mean"}}),
    ("bernoulli_filtered", "bernoulli", {"federation": {"aggregator": "filtered"}}),
    ("bernoulli_capped", "bernoulli", {"federation": {"aggregator": "capped"}}),
    ("bernoulli_bayes", "bernoulli", {"federation": {"aggregator": "bayes"}}),
    ("bernoulli_adam", "bernoulli", {"federation": {"server_optimizer": "adam", "server_lr": 0.1}}),
    ("scaling_momentum", "scaling", {"federation": {"server_optimizer": "momentum", "server_lr": 0.5}}),
    ("bernoulli_sampled", "bernoulli", {"federation": {"num_clients": 4, "clients_per_round": 2}}),
    ("bernoulli_coded", "bernoulli", {"mask": {"encoding": "coded"}}),
    ("bernoulli_sparse", "bernoulli", {"mask": {"encoding": "sparse"}}),
    ("threshold_packed_uniform", "threshold", {"mask": {"encoding": "packed"}, "federation": {"weighting": "uniform"}}),
    # client-level privacy's bounded-contribution path; noise (and example-level DP's Poisson batches)
    # come from the OS's secret source by design, so only the noiseless path is reproducible
    ("threshold_client_bounded", "threshold", {"privacy": {"mode": "client", "noise_multiplier": 0.0}}),
    ("bernoulli_client_bounded", "bernoulli", {"privacy": {"mode": "client", "noise_multiplier": 0.0, "max_flips": 64}}),
]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def globals_of(run_dir: Path) -> dict[str, str]:
    return {p.parent.name: sha(p) for p in sorted(run_dir.glob("round_*/global.safetensors"))}


def run(config: Path, *sets: str) -> None:
    cmd = [sys.executable, "-m", "supermask_cli", "run", "--config", str(config)]
    for s in sets:
        cmd += ["--set", s]
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        sys.exit(f"{config}: exit {done.returncode}\n{done.stderr[-3000:]}")


def tiny_runs(work: Path) -> dict[str, dict[str, str]]:
    model = build_tiny_model(work / "tiny_bert")
    data = write_tiny_data(work)
    out = {}
    for name, kind, overrides in VARIANTS:
        raw = tiny_config_dict(work / name, model, data, kind)
        for section, values in overrides.items():
            raw.setdefault(section, {}).update(values)
        config = work / f"{name}.yaml"
        config.write_text(yaml.safe_dump(raw))
        run(config)
        out[name] = globals_of(work / name)
    return out


def minilm_round1(work: Path) -> dict[str, str]:
    run(ROOT / "configs" / "sst2_minilm_offline.yaml", f"run_dir={work / 'minilm'}", "federation.rounds=1")
    return globals_of(work / "minilm")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--compare")
    parser.add_argument("--minilm", action="store_true")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "supermask-golden"),
                        help="Work folder, emptied first. Model and data paths enter every file's metadata (and so "
                             "its bytes): compare runs made in the same folder.")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result = tiny_runs(work)
    if args.minilm:
        result["minilm_quickstart"] = minilm_round1(work)
    text = json.dumps(result, indent=1, sort_keys=True)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        diff = [k for k in before if before[k] != result.get(k)]
        print(json.dumps({"compared": sorted(before), "different": diff}))
        sys.exit(1 if diff else 0)
    print(text)


if __name__ == "__main__":
    main()
