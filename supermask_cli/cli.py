"""The ``supermask`` command line: each command parses options and calls one step (supermask_cli.steps)."""

from __future__ import annotations

import functools
import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .config import Config, load_config
from .console import console as err_console
from .errors import SupermaskError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
    help="Federated supermask fine-tuning: frozen pretrained weights, learned masks, rounds chained through files.",
)
out = Console(width=None if sys.stdout.isatty() else 160)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a config value: key.sub=value (repeatable).")
]
RoundOpt = Annotated[Optional[int], typer.Option("--round", "-r", help="Round (default: latest with a global file).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the project's errors into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SupermaskError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; outputs are written atomically, re-run the command to continue")
            raise typer.Exit(130) from None

    return wrapper


def _config(path: Path, overrides: list[str] | None) -> Config:
    return load_config(path, overrides or [])


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for key in rows[0] if rows else []:
        table.add_column(key, justify="right" if key != "module" else "left")
    for row in rows:
        table.add_row(*(_fmt(v) for v in row.values()))
    return table


@app.command()
@user_errors
def init(
    config: ConfigOpt,
    set_: SetOpt = None,
    out_path: Annotated[Optional[str], typer.Option("--out", help="Write the global here instead of the run dir.")] = None,
    force: ForceOpt = False,
) -> None:
    """Write the resolved config and round 0's global file (the pretrained model, every weight kept).

    Example: `supermask init --config configs/sst2_minilm_offline.yaml`
    """
    from . import steps

    result, cfg = steps.init(_config(config, set_), out=out_path, force=force)
    for pattern, count in result.target_counts.items():
        out.print(f"target pattern {pattern!r} matched {count} modules", highlight=False)
    out.print(f"{result.num_targets} target modules, {result.num_weights:,} masked weights")
    out.print(f"labels: {result.label_names if result.label_names else 'regression'}")
    out.print(f"wrote {result.path} (sha256 {result.digest[:12]}), kind {cfg.mask.kind}")


@app.command("train-client")
@user_errors
def train_client(
    config: ConfigOpt,
    client: Annotated[int, typer.Option("--client", "-i", help="Client id, 0..num_clients-1.")],
    set_: SetOpt = None,
    rnd: RoundOpt = None,
    global_path: Annotated[Optional[str], typer.Option("--global", help="Global file to train from.")] = None,
    out_path: Annotated[Optional[str], typer.Option("--out", help="Where to write the upload.")] = None,
    force: ForceOpt = False,
    privacy_policy: Annotated[Optional[Path], typer.Option(
        "--privacy-policy", help="This client's privacy policy (YAML): the weakest privacy it accepts and its ledger."
    )] = None,
) -> None:
    """Train one client's mask and head on its own data and write its upload file.

    Example: `supermask train-client --config configs/glue_sst2.yaml --client 3`
    """
    from . import steps
    from .privacy.policy import load_policy

    policy = load_policy(privacy_policy) if privacy_policy is not None else None
    r = steps.train_client(_config(config, set_), client, rnd=rnd, global_path=global_path, out=out_path, force=force,
                           policy=policy)
    if r.replayed:
        out.print(f"round {r.round} was already released by this client: wrote the same upload again to {r.path} "
                  "(from its ledger; nothing new released)")
        return
    out.print(_table(f"round {r.round} client {r.client}", [{
        "examples": r.num_examples, "steps": r.steps, "loss": r.mean_loss, "final loss": r.final_loss,
        "ex/s": r.examples_per_s, "density": r.density, "bytes": r.bytes, "bits/weight": r.bits_per_weight,
        "encoding": r.encoding, "seconds": r.seconds,
    }]))
    out.print(f"wrote {r.path}")


@app.command()
@user_errors
def aggregate(
    config: ConfigOpt,
    set_: SetOpt = None,
    rnd: RoundOpt = None,
    global_path: Annotated[Optional[str], typer.Option("--global", help="The round's global file.")] = None,
    clients: Annotated[
        Optional[list[str]], typer.Option("--clients", help="Client files (repeatable; default: the round's clients/).")
    ] = None,
    out_path: Annotated[Optional[str], typer.Option("--out", help="Where to write the next global.")] = None,
    aggregator: Annotated[
        Optional[str], typer.Option("--aggregator", help="mean | median | trimmed_mean | capped | filtered | bayes (default: config).")
    ] = None,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Drop invalid client files instead of failing.")] = False,
    wait: Annotated[
        Optional[float],
        typer.Option("--wait", min=0, help="Wait up to SECONDS for every sampled client's upload, then aggregate those present."),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Validate a round's client uploads and aggregate them into the next round's global.

    Only the round's sampled clients (round_RRR/participants.json) may upload. With `--wait`,
    stragglers missing at the deadline are recorded in the new global; fewer than
    federation.min_clients uploads fail the round (exit 2).

    Example: `supermask aggregate --config configs/glue_sst2.yaml --round 0 --wait 3600`
    """
    from . import steps
    from .rules import RULES

    if aggregator is not None and aggregator not in RULES:
        raise SupermaskError(f"--aggregator {aggregator!r}: use one of {', '.join(RULES)}")
    r = steps.aggregate(
        _config(config, set_), rnd=rnd, global_path=global_path, client_paths=clients, out=out_path,
        force=force, skip_invalid=skip_invalid, rule=aggregator, wait=wait,
    )
    out.print(_table(f"aggregate round {r.round} -> {r.round + 1} ({r.rule})", [{
        "clients": len(r.clients), "dropped": len(r.dropped), "examples": r.num_examples, "density": r.density,
        "upload bytes": r.upload_bytes, "bits/weight": r.bits_per_weight, "seconds": r.seconds,
    }]))
    for d in r.dropped:
        out.print(f"[yellow]dropped[/] {escape(d.reason)}", highlight=False)
    if r.missing:
        out.print(f"[yellow]missing[/] sampled clients without an upload: {r.missing}", highlight=False)
    out.print(f"wrote {r.path}")


@app.command("eval")
@user_errors
def eval_(
    config: ConfigOpt,
    set_: SetOpt = None,
    rnd: RoundOpt = None,
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", help="A global file to evaluate.")] = None,
    out_path: Annotated[Optional[str], typer.Option("--out", help="Where to write metrics.json.")] = None,
    force: ForceOpt = False,
) -> None:
    """Evaluate a round's global on the eval data; write and print its metrics.

    Example: `supermask eval --config configs/glue_sst2.yaml --round 1`
    """
    from . import steps
    from .metrics import METRICS

    metrics, path = steps.evaluate(_config(config, set_), rnd=rnd, checkpoint_path=checkpoint, out=out_path, force=force)
    keys = ["round", "num_examples", "loss", *[k for k in metrics if k in METRICS], "density"]
    out.print(_table(f"eval round {metrics['round']}", [{k: metrics[k] for k in keys}]))
    out.print(f"wrote {path}")


@app.command()
@user_errors
def run(
    config: ConfigOpt,
    set_: SetOpt = None,
    seeds: Annotated[
        Optional[str], typer.Option("--seeds", help="Comma-separated seeds: one run per seed in RUN_DIR/seed_<s>.")
    ] = None,
    privacy_policies: Annotated[Optional[Path], typer.Option(
        "--privacy-policies", help="A directory of client-N.yaml privacy policies, one per simulated client."
    )] = None,
) -> None:
    """Run every round on this machine (init, clients, aggregate, eval); re-run to resume.

    Example: `supermask run --config configs/sst2_minilm_offline.yaml`
    """
    from . import seeds as seeding
    from .privacy.policy import load_policy_dir

    base = _config(config, set_)
    policies = load_policy_dir(privacy_policies, base.federation.num_clients) if privacy_policies else None
    configs = seeding.seed_configs(base, seeding.parse_seeds(seeds)) if seeds is not None else [base]
    for cfg in configs:
        _run_one(cfg, policies)
    if seeds is not None:
        out.print(f"mean ± std over seeds: supermask report {base.run_dir}")


def _run_one(cfg: Config, policies: dict | None = None) -> None:
    from . import steps

    main = steps.metric_names(cfg)[0]
    rows: list[dict[str, Any]] = []

    def on_client(r: steps.ClientResult) -> None:
        err_console.print(
            f"  round {r.round} client {r.client}: {r.num_examples} examples, loss {r.mean_loss:.4f}, "
            f"{r.examples_per_s:.1f} ex/s, {r.bytes:,} bytes ({r.bits_per_weight:.3f} bits/weight)",
            highlight=False,
        )

    def on_round(s: steps.RoundSummary) -> None:
        rows.append(s.row(main))
        out.print(_table(f"{cfg.run_dir}", rows))

    def on_refused(client: int, reason: str) -> None:
        err_console.print(f"  client {client} refused: {reason}", highlight=False, soft_wrap=True, markup=False)

    steps.run(cfg, on_client=on_client, on_round=on_round, policies=policies, on_refused=on_refused)
    out.print(f"metrics: {cfg.run_dir}/metrics.jsonl")


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
    from . import steps

    info = steps.inspect(file, global_path)
    if as_json:
        sys.stdout.write(json.dumps(info) + "\n")
        return
    head = {k: info[k] for k in ("kind", "role", "round", "client", "num_examples", "density", "bits_per_weight",
                                 "ideal_bits_per_weight", "encoding", "num_weights")}
    out.print(_table(file, [head]))
    out.print(_table("modules", info["modules"]))
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
    from . import steps

    cfg = _config(config, set_) if config else None
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
    from . import report as rep

    histories = [rep.load_history(d) for d in [run_dir, *(compare or [])]]
    for h in histories:
        out.print(_table(h.run_dir, rep.table_rows(h)))
    path = out_path or f"{run_dir.rstrip('/')}/report.png"
    rep.plot(histories, path)
    out.print(f"wrote {path}")


from .cli_audit import audit as _audit  # noqa: E402  (its own module; needs no helper of this one)

app.command("audit")(user_errors(_audit))


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

    Example: `supermask progress --config configs/glue_sst2.yaml --round 2`
    """
    from .steps.progress import progress as read_progress

    cfg = _config(config, set_)
    rows = [p.as_dict() for p in read_progress(cfg, rnd, rounds)]
    if as_json:
        sys.stdout.write(json.dumps({"run_dir": cfg.run_dir, "rounds": rows}) + "\n")
        return
    for row in rows:
        fields = [f"{k}={','.join(map(str, v)) if isinstance(v, list) else int(v) if isinstance(v, bool) else v}"
                  for k, v in row.items()]
        sys.stdout.write(" ".join(fields) + "\n")


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
) -> None:
    """Submit the whole run to Slurm at once: per round a job array of its clients, then aggregate and eval.

    Jobs run this interpreter's `supermask` with the same config and `--set` overrides (share the run dir and
    the config between nodes). Steps whose outputs exist are skipped: submit again to continue a failed run.

    Example: `supermask slurm --config configs/glue_sst2.yaml --sbatch-arg=--partition=gpu --sbatch-arg=--time=2:00:00`
    """
    from .launch import slurm as launcher

    cfg = _config(config, set_)
    opts = launcher.options(cfg, config, set_ or [], rounds=rounds, array_parallelism=array_parallelism,
                            sbatch_args=sbatch_arg or [], gpus_per_client=gpus_per_client,
                            aggregate_wait=aggregate_wait, directory=slurm_dir)
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


from .cli_secagg import app as _secagg_app  # noqa: E402  (after the shared options it imports)

app.add_typer(_secagg_app, name="secagg")


def main() -> None:
    app()
