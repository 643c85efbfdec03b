"""Upload size per round: packed bits vs zstd vs ANS coding vs sparse coding vs the cross-entropy bound.

Runs the same federated run twice — uploads as ``mask.encoding=auto`` chooses and bit-packed
(``packed``) — and prints one JSON object: per round, the mean bits per masked weight of each
method over the round's client masks (``stored``: what the files hold), and the final metrics of
both runs (coding is lossless, so they must be equal).

    python benchmarks/upload_bits.py --config configs/sst2_minilm_offline.yaml \
        --set federation.rounds=5 --set train.max_steps=32 --out-dir /tmp/bench_bits
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from supermask_cli import checkpoint, coding
from supermask_cli import steps  # noqa: E402
from supermask_cli.config import load_config  # noqa: E402
from supermask_cli.layout import Layout  # noqa: E402


def round_bits(layout: Layout, rnd: int) -> dict[str, float]:
    """Mean bits per masked weight of round ``rnd``'s client masks under each method."""
    gl = checkpoint.load_checkpoint(layout.global_path(rnd))
    totals = {"packed": 0.0, "zstd": 0.0, "coder": 0.0, "sparse": 0.0, "entropy_bound": 0.0}
    files = layout.client_files(rnd)
    for path in files:
        ckpt = checkpoint.load_checkpoint(path, reference=gl)
        for name in ckpt.meta.targets:
            mask = ckpt.tensors[f"mask/{name}"]
            probs = checkpoint.reference_probs(ckpt.meta, name, gl)
            totals["packed"] += 8 * coding.pack_bits(mask).numel()
            totals["zstd"] += 8 * coding.zstd_packed_bytes(mask)
            totals["coder"] += 8 * len(coding.encode_mask(mask, probs))
            totals["sparse"] += 8 * len(coding.encode_sparse(mask, coding.sparse_plan(probs)))
            totals["entropy_bound"] += coding.ideal_bits(mask, probs)
    weights = gl.meta.num_weights * len(files)
    return {k: v / weights for k, v in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    finals = {}
    rows = []
    for encoding in ("auto", "packed"):
        run_dir = os.path.join(args.out_dir, encoding)
        cfg = load_config(args.config, [*args.overrides, f"run_dir={run_dir}", f"mask.encoding={encoding}"])
        start = time.perf_counter()
        summaries = steps.run(cfg)
        finals[encoding] = {"metrics": summaries[-1].metrics, "seconds": time.perf_counter() - start}
        if encoding == "auto":
            layout = Layout(run_dir)
            for rnd in range(cfg.federation.rounds):
                rows.append({"round": rnd, **round_bits(layout, rnd), "stored_bits_per_weight": summaries[rnd].upload.bits_per_weight})
    main_metric = steps.metric_names(cfg)[0]
    result = {
        "config": args.config,
        "overrides": args.overrides,
        "per_round_bits_per_weight": rows,
        "mean_bits_from_round_3": {
            key: sum(r[key] for r in rows[3:]) / len(rows[3:]) if len(rows) > 3 else None
            for key in ("coder", "sparse", "stored_bits_per_weight")
        },
        "final_metric": main_metric,
        "final_auto": finals["auto"]["metrics"][main_metric],
        "final_packed": finals["packed"]["metrics"][main_metric],
        "final_equal": finals["auto"]["metrics"][main_metric] == finals["packed"]["metrics"][main_metric],
        "seconds": {k: v["seconds"] for k, v in finals.items()},
    }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
