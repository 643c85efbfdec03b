"""Soak and restart through files (issue 22 item 5): a tiny-model federation of many clients,
a few sampled per round, run by `supermask run`'s step API in a child process.

Two runs of the same config: an undisturbed one, and one killed with SIGKILL mid-round (after
some of a round's uploads are written, before its global) at the given rounds and resumed each
time. Prints one JSON object: both runs' per-round wall time and server RSS (current and peak,
read in the child after each round), whether every global of the disturbed run is byte-identical
to the undisturbed run's, the temporary files left behind, and whether any child outlived it.

    python benchmarks/soak_files.py --clients 1000 --per-round 10 --rounds 100 \
        --kill-at 30 70 --out-dir /tmp/soak_files > soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(config: str) -> None:
    """Run (or resume) the federation; one JSON line per finished round on stdout."""
    from supermask_cli import steps
    from supermask_cli.config import load_config

    def on_round(summary) -> None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        line = {"round": summary.round, "seconds": round(summary.wall_seconds, 3),
                "rss_mb": round(_rss_mb(), 1), "peak_rss_mb": round(peak, 1)}
        print(json.dumps(line), flush=True)

    steps.run(load_config(config, []), on_round=on_round)


def write_config(root: Path, name: str, clients: int, per_round: int, rounds: int) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_tiny_model, tiny_config_dict, write_tiny_data

    model = root / "tiny_bert"
    if not (model / "config.json").exists():
        build_tiny_model(model)
    data = (root / "data" / "train.tsv", root / "data" / "dev.tsv")
    if not data[0].exists():
        (root / "data").mkdir(parents=True, exist_ok=True)
        write_tiny_data(root / "data", n_train=8 * clients, n_eval=64)
    raw = tiny_config_dict(root / name, model, data)
    raw["federation"] = {"num_clients": clients, "clients_per_round": per_round, "rounds": rounds}
    raw["train"] = {**raw["train"], "max_steps": 1}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _start(config: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, __file__, "--child", str(config)], stdout=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)


def _uploads(run_dir: Path, rnd: int) -> int:
    folder = run_dir / f"round_{rnd:03d}" / "clients"
    return len(list(folder.glob("client_*.safetensors"))) if folder.is_dir() else 0


def drive(config: Path, run_dir: Path, kill_at: list[int], per_round: int) -> dict:
    """Run to the end, SIGKILLing the child once per round in ``kill_at`` when about half of that
    round's uploads are written and its global is not."""
    rows: list[dict] = []
    kills: list[dict] = []
    pending = sorted(kill_at)
    while True:
        proc = _start(config)
        target = pending.pop(0) if pending else None
        if target is None:
            out, _ = proc.communicate()
        else:
            while proc.poll() is None:
                done = _uploads(run_dir, target) >= max(1, per_round // 2)
                if done and not (run_dir / f"round_{target + 1:03d}" / "global.safetensors").exists():
                    os.killpg(proc.pid, signal.SIGKILL)
                    kills.append({"round": target, "uploads_written": _uploads(run_dir, target)})
                    break
                time.sleep(0.05)
            out, _ = proc.communicate()
        rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        if target is None:
            if proc.returncode != 0:
                raise SystemExit(f"soak child failed with exit {proc.returncode}")
            break
    survivors = subprocess.run(["pgrep", "-f", f"--child {config}"], capture_output=True, text=True).stdout.split()
    return {"rounds": rows, "kills": kills, "children_left": len(survivors)}


def summarize(rows: list[dict]) -> dict:
    """Per-round figures of the process that ran each round, and their trend (first tenth vs last)."""
    by_round: dict[int, dict] = {}
    for row in rows:  # a resumed process reports the rounds it skipped too: keep the one that ran it
        if row["round"] not in by_round or row["seconds"] > by_round[row["round"]]["seconds"]:
            by_round[row["round"]] = row
    ordered = [by_round[k] for k in sorted(by_round)][:-1]  # the last round is an evaluation only
    tenth = max(1, len(ordered) // 10)
    first, last = ordered[:tenth], ordered[-tenth:]
    mean = lambda xs, key: round(sum(x[key] for x in xs) / len(xs), 3)  # noqa: E731
    return {"rounds": len(ordered), "first_tenth_seconds": mean(first, "seconds"),
            "last_tenth_seconds": mean(last, "seconds"),
            "rss_mb_first_tenth": mean(first, "rss_mb"), "rss_mb_last_tenth": mean(last, "rss_mb"),
            "peak_rss_mb_after_first_tenth": first[-1]["peak_rss_mb"], "peak_rss_mb_end": ordered[-1]["peak_rss_mb"]}


def compare(a: Path, b: Path, rounds: int) -> dict:
    differ = [r for r in range(rounds + 1)
              if (a / f"round_{r:03d}" / "global.safetensors").read_bytes() != (b / f"round_{r:03d}" / "global.safetensors").read_bytes()]
    return {"globals_compared": rounds + 1, "globals_differing": differ}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--kill-at", type=int, nargs="*", default=[30, 70])
    parser.add_argument("--out-dir", default="/tmp/soak_files")
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    root = Path(args.out_dir)
    root.mkdir(parents=True, exist_ok=True)
    runs = {}
    for name, kills in (("undisturbed", []), ("disturbed", args.kill_at)):
        config = write_config(root, name, args.clients, args.per_round, args.rounds)
        start = time.perf_counter()
        result = drive(config, root / name, kills, args.per_round)
        temps = sorted(str(p) for p in (root / name).rglob(".tmp-*"))
        runs[name] = {"wall_seconds": round(time.perf_counter() - start, 1), "kills": result["kills"],
                      "children_left": result["children_left"], "temp_files_left": temps,
                      "summary": summarize(result["rounds"]), "per_round": result["rounds"]}
    report = {"benchmark": "soak_files", "machine": os.uname().nodename, "date": time.strftime("%Y-%m-%d"),
              "clients": args.clients, "per_round": args.per_round, "rounds": args.rounds,
              **compare(root / "undisturbed", root / "disturbed", args.rounds), "runs": runs}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
