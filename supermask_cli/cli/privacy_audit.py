"""The ``supermask audit`` command (registered in :mod:`supermask_cli.cli`): options -> steps.audit."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..config import load_config

out = Console(width=None if sys.stdout.isatty() else 160)


def audit(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config file (the run's).")],
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="The global to audit (with --client-file: the global that client trained from).")],
    members: Annotated[Optional[str], typer.Option("--members", help="Labelled examples the model trained on (tsv/csv/jsonl/parquet, the config's fields).")] = None,
    non_members: Annotated[Optional[str], typer.Option("--non-members", help="Labelled examples of the same distribution that no client trained on.")] = None,
    members_client: Annotated[Optional[int], typer.Option("--members-client", help="Members = client N's share of the run's pool.")] = None,
    non_members_heldout: Annotated[Optional[int], typer.Option("--non-members-heldout", help="Non-members = K rows of data.train_file outside the run's pool, with the members' label mix.")] = None,
    client_file: Annotated[Optional[str], typer.Option("--client-file", help="Audit this client's model (global + its upload, what an aggregator sees) instead of the global.")] = None,
    reference: Annotated[Optional[str], typer.Option("--reference", help="Reference global for the calibrated attack (default: the base model, no mask, with the audited head).")] = None,
    max_examples: Annotated[Optional[int], typer.Option("--max-examples", min=1, help="At most N members and N non-members (seeded sample).")] = None,
    plot: Annotated[Optional[str], typer.Option("--plot", help="Write the ROC curves (log FPR) and the DP bound to this PNG.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config value: key.sub=value (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Membership inference against a global or one client's model: a loss-threshold attack and one
    calibrated by a reference model; AUC, TPR at FPR 0.1%, 1%, 10%, and the DP bound where the file records ε.

    AUC 0.5 is chance: the model treats training rows like unseen ones; 1.0 means every member is told apart.

    Example: `supermask audit --config runs/sst2_minilm/config.yaml --checkpoint runs/sst2_minilm/round_003/global.safetensors --members-client 0 --non-members-heldout 2000`
    """
    from ..membership import FPRS, fpr_key
    from ..steps.audit import audit as run_audit

    result = run_audit(
        load_config(config, set_ or []), checkpoint, members=members, non_members=non_members,
        members_client=members_client, non_members_heldout=non_members_heldout, client_file=client_file,
        reference_path=reference, max_examples=max_examples,
    )
    info = result.as_json()
    audited = "/".join((client_file or checkpoint).rstrip("/").split("/")[-3:])
    title = f"{audited}: {info['num_members']} members, {info['num_non_members']} non-members"
    if plot:
        from ..membership_plot import plot as plot_roc

        plot_roc(list(result.attacks.values()), plot, title, result.epsilon, result.delta)
    if as_json:
        sys.stdout.write(json.dumps(info) + "\n")
        return
    table = Table(title=title, title_justify="left")
    for column in ["attack", "AUC", *(f"TPR @ FPR {fpr_key(f)}" for f in FPRS)]:
        table.add_column(column, justify="left" if column == "attack" else "right")
    for name, a in info["attacks"].items():
        table.add_row(name, f"{a['auc']:.4f}", *(f"{a['tpr_at_fpr'][fpr_key(f)]:.4f}" for f in FPRS))
    if "bound_tpr_at_fpr" in info:
        b = info["bound_tpr_at_fpr"]
        table.add_row(f"DP bound (ε {info['epsilon']:.3g}, δ {info['delta']:.0e})", f"{info['bound_auc']:.4f}",
                      *(f"{b[fpr_key(f)]:.4f}" for f in FPRS))
    out.print(table)
    out.print(f"chance: AUC 0.5 ± {info['auc_null_std']:.4f} (1 std for these set sizes); mean loss members "
              f"{info['mean_loss_members']:.4f}, non-members {info['mean_loss_non_members']:.4f}", highlight=False)
    out.print(f"members: {info['members']}; non-members: {info['non_members']}", highlight=False)
    if result.privacy_note:
        out.print(f"[yellow]privacy[/]: {result.privacy_note}", highlight=False)
    if plot:
        out.print(f"wrote {plot}")
