"""Upload bytes of a finished run under another ``mask.encoding``: every client file of every
round is decoded against its round's global and encoded again (``auto`` = what training would
have chosen), and the file sizes are summed per round. Coding is lossless, so a run trained with
``mask.encoding=packed`` (fast) reports here the bytes the default ``auto`` would have uploaded.

    python benchmarks/reencode.py /tmp/b13/fed_bern_s0/fed_bernoulli_dirichlet --encoding auto

Prints one JSON object: per round, the stored and re-encoded bytes of all its client files.
``--write-metrics DIR`` writes the run's metrics log with those bytes, for ``report --compare``.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from supermask_cli import checkpoint, storage  # noqa: E402
from supermask_cli.layout import Layout  # noqa: E402
from supermask_cli.runlog import read_metrics_rows, write_metrics_rows  # noqa: E402
from supermask_cli.steps.training import choose_encoding  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--encoding", default="auto", choices=["auto", "packed", "sparse", "coded", "none"])
    parser.add_argument("--write-metrics", metavar="DIR",
                        help="also write DIR/metrics.jsonl: the run's rows with upload_bytes re-encoded, for "
                             "`supermask report ... --compare DIR`")
    args = parser.parse_args()
    layout = Layout(args.run_dir)
    rounds = []
    for rnd in layout.rounds():
        files = layout.client_files(rnd)
        if not files:
            continue
        gl = checkpoint.load_checkpoint(layout.global_path(rnd))
        stored = reencoded = mask_bits = 0
        encodings: dict[str, int] = {}
        for path in files:
            ckpt = checkpoint.load_checkpoint(path, reference=gl)
            meta, tensors = choose_encoding(ckpt.meta, ckpt.tensors, gl, args.encoding)
            data = checkpoint.serialize(meta, tensors)
            again = checkpoint.loads(data, path, reference=gl)
            for key, value in ckpt.tensors.items():  # lossless, or this number means nothing
                assert again.tensors[key].equal(value), f"{path}: {key} changed under {meta.encoding}"
            fs, local = storage.filesystem(path)
            stored += fs.size(local)
            reencoded += len(data)
            mask_bits += meta.mask_bits
            encodings[meta.encoding] = encodings.get(meta.encoding, 0) + 1
        rounds.append({"round": rnd, "clients": len(files), "stored_bytes": stored, "reencoded_bytes": reencoded,
                       "bits_per_weight": mask_bits / len(files) / gl.meta.num_weights, "encodings": encodings})
    if args.write_metrics:
        by_round = {r["round"]: r for r in rounds}
        rows = []
        for row in read_metrics_rows(layout):  # the stored encoding's upload fields replaced by the re-encoded ones
            row = {k: v for k, v in row.items() if k != "bits_per_weight"}
            if row["round"] in by_round:
                row.update(upload_bytes=by_round[row["round"]]["reencoded_bytes"],
                           bits_per_weight=by_round[row["round"]]["bits_per_weight"])
            rows.append(row)
        write_metrics_rows(Layout(args.write_metrics), rows)
    print(json.dumps({"run_dir": args.run_dir, "encoding": args.encoding, "rounds": rounds,
                      "total_stored_bytes": sum(r["stored_bytes"] for r in rounds),
                      "total_reencoded_bytes": sum(r["reencoded_bytes"] for r in rounds)}, indent=2))


if __name__ == "__main__":
    main()
