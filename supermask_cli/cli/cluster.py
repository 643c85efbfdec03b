"""`supermask slurm`: the whole run as Slurm jobs."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import ConfigOpt, SetOpt, app, out, read_config, user_errors


@app.command()
@user_errors
def slurm(
    config: ConfigOpt,
    set_: SetOpt = None,
    rounds: Annotated[Optional[int], typer.Option("--rounds", help="Rounds to run (default: federation.rounds).")] = None,
    array_parallelism: Annotated[
        Optional[int], typer.Option("--array-parallelism", help="At most P clients of a round at once (array %P).")
    ] = None,
    sbatch_arg: Annotated[
        Optional[list[str]],
        typer.Option("--sbatch-arg", help="Passed to every sbatch, e.g. --sbatch-arg=--partition=gpu (repeatable)."),
    ] = None,
    gpus_per_client: Annotated[
        Optional[int], typer.Option("--gpus-per-client", help="--gres=gpu:N per client job (default: 1 if train.device is cuda/auto, else 0).")
    ] = None,
    aggregate_wait: Annotated[
        int, typer.Option("--aggregate-wait", help="Seconds aggregate waits for missing uploads when min_clients < clients.")
    ] = 0,
    slurm_dir: Annotated[
        Optional[str], typer.Option("--slurm-dir", help="Job scripts, logs and jobs.json (default: <run_dir>/slurm).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Write and print the job scripts; submit nothing.")] = False,
    privacy_policies: Annotated[Optional[Path], typer.Option(
        "--privacy-policies", help="Client N's job trains with --privacy-policy DIR/client-N.yaml."
    )] = None,
) -> None:
    """Submit the whole run to Slurm at once: per round a job array of its clients, then aggregate and eval.

    Jobs run this interpreter's `supermask` with the same config and `--set` overrides (share the run dir and
    the config between nodes). Steps whose outputs exist are skipped: submit again to continue a failed run.

    Example: `supermask slurm --config configs/glue_sst2.yaml --sbatch-arg=--partition=gpu --sbatch-arg=--time=2:00:00`
    """
    from ..launch import slurm as launcher

    cfg = read_config(config, set_)
    opts = launcher.options(cfg, config, set_ or [], rounds=rounds, array_parallelism=array_parallelism,
                            sbatch_args=sbatch_arg or [], gpus_per_client=gpus_per_client,
                            aggregate_wait=aggregate_wait, directory=slurm_dir, privacy_policies=privacy_policies)
    records = launcher.submit(cfg, opts, dry_run=dry_run)
    if not records:
        out.print(f"nothing to submit: {opts.rounds} round(s) of {cfg.run_dir} are done")
    for r in records:
        if dry_run:
            sys.stdout.write(f"# {r['script']}\n{Path(r['script']).read_text()}# {shlex.join(r['sbatch'])}\n\n")
        else:
            out.print(f"submitted {r['name']}: job {r['id']}", highlight=False)
    if records and not dry_run:
        out.print(f"job ids: {opts.directory / 'jobs.json'}; logs: {opts.directory / 'logs'}")
