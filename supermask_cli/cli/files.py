"""Commands that read a run's files: `inspect`, `export`, `report`, `progress`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import (
    ConfigOpt,
    ForceOpt,
    SetOpt,
    app,
    out,
    read_config,
    table,
    user_errors,
)


@app.command()
@user_errors
def inspect(
    file: Annotated[str, typer.Argument(help="Any supermask checkpoint (path or fsspec URL).")],
    global_path: Annotated[
        Optional[str], typer.Option("--global", help="The global a coded client file was coded against.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print a checkpoint's metadata, per-module density and bits per weight.

    Example: `supermask inspect runs/sst2/round_001/global.safetensors --json`
    """
    from .. import steps

    info = steps.inspect(file, global_path)
    if as_json:
        sys.stdout.write(json.dumps(info) + "\n")
        return
    head = {k: info[k] for k in ("kind", "role", "round", "client", "num_examples", "density", "bits_per_weight",
                                 "ideal_bits_per_weight", "encoding", "num_weights")}
    out.print(table(file, [head]))
    out.print(table("modules", info["modules"]))
    if info["aggregation"]:
        agg = info["aggregation"]
        out.print(f"aggregated with {agg['rule']} from {len(agg['clients'])} clients; dropped {len(agg['dropped'])}")


@app.command()
@user_errors
def export(
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="A global file.")],
    out_dir: Annotated[str, typer.Option("--out", help="Directory for the Hugging Face model.")],
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Config (default: from the file).")] = None,
    set_: SetOpt = None,
    force: ForceOpt = False,
) -> None:
    """Bake a global mask into the weights and write a plain Hugging Face model directory.

    Example: `supermask export --checkpoint runs/sst2/round_003/global.safetensors --out exported/`
    """
    from .. import steps

    cfg = read_config(config, set_) if config else None
    mode = cfg.mask.eval if cfg else "expected"
    info = steps.export(checkpoint, out_dir, cfg=cfg, eval_mode=mode, force=force)
    out.print(f"wrote {info['path']} ({info['kind']} round {info['round']}, {info['num_targets']} modules baked); "
              "load it with AutoModelForSequenceClassification.from_pretrained")


@app.command()
@user_errors
def report(
    run_dir: Annotated[str, typer.Argument(help="A run directory.")],
    compare: Annotated[Optional[list[str]], typer.Option("--compare", help="Other run directories to overlay (repeatable); a directory holding only a metrics.jsonl (a baseline, e.g. FedAvg from benchmarks/accuracy.py) works too.")] = None,
    out_path: Annotated[Optional[str], typer.Option("--out", help="Picture path (default: RUN_DIR/report.png).")] = None,
) -> None:
    """Print a run's per-round table and write report.png (metric, loss, upload size, final densities,
    metric against cumulative uploaded bytes). A directory of `seed_*` runs (`run --seeds`) is
    reported as mean ± std per round.

    Example: `supermask report runs/sst2_minilm --compare runs/sst2_threshold`
    """
    from .. import report as rep

    histories = [rep.load_history(d) for d in [run_dir, *(compare or [])]]
    for h in histories:
        out.print(table(h.run_dir, rep.table_rows(h)))
    path = out_path or f"{run_dir.rstrip('/')}/report.png"
    rep.plot(histories, path)
    out.print(f"wrote {path}")


@app.command()
@user_errors
def progress(
    config: ConfigOpt,
    set_: SetOpt = None,
    rnd: Annotated[Optional[int], typer.Option("--round", "-r", help="One round (default: 0..rounds).")] = None,
    rounds: Annotated[Optional[int], typer.Option("--rounds", help="Last round to list (default: federation.rounds).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print which steps of a run are done: per round its global, metrics, participants and uploads.

    One line per round of `key=value` fields (lists comma-separated), or `--json`. Works on URL run dirs.
    With `secure_aggregation.enabled`, each line also has `secagg=1` and the client ids whose
    `secagg_keys`, `secagg_shares` and `secagg_unmask` messages are in, and `secagg_survivors`
    (`-` until `aggregate` lists them); without, no `secagg` fields.

    Example: `supermask progress --config configs/glue_sst2.yaml --round 2`
    """
    from ..steps.progress import progress as read_progress

    cfg = read_config(config, set_)
    rows = [p.as_dict() for p in read_progress(cfg, rnd, rounds)]
    if as_json:
        sys.stdout.write(json.dumps({"run_dir": cfg.run_dir, "rounds": rows}) + "\n")
        return
    for row in rows:
        secure = row.pop("secure_aggregation", None)
        if secure is not None:  # flat, so that a shell script can split the line on spaces
            row["secagg"] = True
            row.update({f"secagg_{k}": "-" if v is None else v for k, v in secure.items()})
        fields = [f"{k}={','.join(map(str, v)) if isinstance(v, list) else int(v) if isinstance(v, bool) else v}"
                  for k, v in row.items()]
        sys.stdout.write(" ".join(fields) + "\n")
