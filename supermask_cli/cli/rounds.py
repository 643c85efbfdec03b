"""The round commands: `init`, `train-client`, `aggregate`, `eval` and `run` (every round here)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from ..config import Config
from ..errors import SupermaskError
from .common import (
    ConfigOpt,
    ForceOpt,
    RoundOpt,
    SecretsOpt,
    SetOpt,
    app,
    err_console,
    out,
    read_config,
    table,
    user_errors,
)


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
    from .. import steps

    result, cfg = steps.init(read_config(config, set_), out=out_path, force=force)
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
    secrets: SecretsOpt = None,
) -> None:
    """Train one client's mask and head on its own data and write its upload file (masked, with secure aggregation).

    Example: `supermask train-client --config configs/glue_sst2.yaml --client 3`
    """
    from .. import steps
    from ..privacy.policy import load_policy

    policy = load_policy(privacy_policy) if privacy_policy is not None else None
    r = steps.train_client(read_config(config, set_), client, rnd=rnd, global_path=global_path, out=out_path, force=force,
                           policy=policy, secrets=secrets)
    if r.replayed:
        out.print(f"round {r.round} was already released by this client: wrote the same upload again to {r.path} "
                  "(from its ledger; nothing new released)")
        return
    out.print(table(f"round {r.round} client {r.client}", [{
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
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Drop invalid files named by --clients instead of failing (the round's clients/ always quarantines them).")] = False,
    wait: Annotated[
        Optional[float],
        typer.Option("--wait", min=0, help="Wait up to SECONDS for every sampled client's upload, then aggregate those present."),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Validate a round's client uploads and aggregate them into the next round's global.

    Only the round's sampled clients (round_RRR/participants.json) may upload. Every file in
    round_RRR/clients/ is checked first; one that fails moves to round_RRR/rejected/ with a
    one-line reason (recorded in the new global's dropped list) and the round goes on without it.
    With `--wait`, a rejected client may upload again until the deadline; stragglers missing then
    are recorded in the new global; fewer than federation.min_clients valid uploads fail the
    round (exit 2).

    Example: `supermask aggregate --config configs/glue_sst2.yaml --round 0 --wait 3600`
    """
    from .. import steps
    from ..rules import RULES

    if aggregator is not None and aggregator not in RULES:
        raise SupermaskError(f"--aggregator {aggregator!r}: use one of {', '.join(RULES)}")
    r = steps.aggregate(
        read_config(config, set_), rnd=rnd, global_path=global_path, client_paths=clients, out=out_path,
        force=force, skip_invalid=skip_invalid, rule=aggregator, wait=wait,
    )
    if r.waiting:  # secure aggregation: not an error; run it again once the clients have answered
        out.print(f"waiting: {r.waiting}", highlight=False)
        return
    out.print(table(f"aggregate round {r.round} -> {r.round + 1} ({r.rule})", [{
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
    from .. import steps
    from ..metrics import METRICS

    metrics, path = steps.evaluate(read_config(config, set_), rnd=rnd, checkpoint_path=checkpoint, out=out_path, force=force)
    keys = ["round", "num_examples", "loss", *[k for k in metrics if k in METRICS], "density"]
    out.print(table(f"eval round {metrics['round']}", [{k: metrics[k] for k in keys}]))
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
    from .. import seeds as seeding
    from ..privacy.policy import load_policy_dir

    base = read_config(config, set_)
    policies = load_policy_dir(privacy_policies, base.federation.num_clients) if privacy_policies else None
    configs = seeding.seed_configs(base, seeding.parse_seeds(seeds)) if seeds is not None else [base]
    for cfg in configs:
        _run_one(cfg, policies)
    if seeds is not None:
        out.print(f"mean ± std over seeds: supermask report {base.run_dir}")


def _run_one(cfg: Config, policies: dict | None = None) -> None:
    from .. import steps

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
        out.print(table(f"{cfg.run_dir}", rows))

    def on_refused(client: int, reason: str) -> None:
        err_console.print(f"  client {client} refused: {reason}", highlight=False, soft_wrap=True, markup=False)

    def on_rejected(client: int, reason: str) -> None:
        err_console.print(f"  client {client}'s earlier upload moved to rejected/ (it trains again): {reason}",
                          highlight=False, soft_wrap=True, markup=False)

    steps.run(cfg, on_client=on_client, on_round=on_round, policies=policies, on_refused=on_refused,
              on_rejected=on_rejected)
    out.print(f"metrics: {cfg.run_dir}/metrics.jsonl")
