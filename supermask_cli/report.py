"""``supermask report``: a run's per-round table and a picture (metric, loss, upload size, final
densities, metric against cumulative uploaded bytes). A directory of ``seed_*`` runs (``supermask
run --seeds``) is reported as each round's mean ± standard deviation over the seeds. A directory
that holds only a ``metrics.jsonl`` (a baseline outside the mask format, e.g. FedAvg of full
fine-tuning written by ``benchmarks/accuracy.py``) is reported from those rows, so ``--compare``
puts it on the same accuracy-against-bytes axes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import checkpoint, seeds, storage
from .errors import SupermaskError
from .layout import Layout
from .runlog import read_metrics_rows, round_rows

MAIN_METRICS = ("accuracy", "matthews_correlation", "f1", "pearson", "spearman")


@dataclass
class RunHistory:
    run_dir: str
    rows: list[dict[str, Any]]
    final_densities: dict[str, float]
    seeds: int = 1

    @property
    def metric(self) -> str:
        for name in MAIN_METRICS:
            if self.rows and name in self.rows[0]:
                return name
        return "loss"


def with_cumulative_upload(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``cumulative_upload_bytes``: every client byte uploaded before the round's global
    (0 at round 0; a round's ``upload_bytes`` are the uploads that trained from its global)."""
    total = 0
    out = []
    for row in rows:
        out.append({**row, "cumulative_upload_bytes": total})
        total += row.get("upload_bytes") or 0
    return out


def load_history(run_dir: str) -> RunHistory:
    """Per-round metrics and upload statistics of a run directory, or of its ``seed_*`` runs merged."""
    layout = Layout(run_dir)
    rounds = layout.rounds()
    if not rounds and seeds.seed_dirs(run_dir):
        runs = [load_history(d) for d in seeds.seed_dirs(run_dir)]
        names = runs[0].final_densities
        return RunHistory(
            run_dir=run_dir,
            rows=seeds.merge_rows([r.rows for r in runs]),
            final_densities={n: sum(r.final_densities[n] for r in runs) / len(runs) for n in names},
            seeds=len(runs),
        )
    if not rounds and storage.exists(layout.metrics_log):
        return RunHistory(run_dir=run_dir, rows=with_cumulative_upload(read_metrics_rows(layout)),
                          final_densities={})
    if not rounds:
        raise SupermaskError(f"'{run_dir}' holds no round_*/global.safetensors, seed_* runs nor metrics.jsonl; "
                             "is it a run directory?")
    rows = round_rows(layout)
    if not rows:
        raise SupermaskError(f"'{run_dir}' has no metrics.json yet; run `supermask eval` or `supermask run`")
    final = checkpoint.load_checkpoint(layout.global_path(rounds[-1]))
    return RunHistory(run_dir=run_dir, rows=with_cumulative_upload(rows), final_densities=final.module_densities())


def table_rows(history: RunHistory) -> list[dict[str, Any]]:
    keys = ["round", history.metric, "loss", "density", "upload_bytes", "cumulative_upload_bytes", "bits_per_weight",
            "download_bytes", "download_bits_per_weight"]
    if history.seeds > 1:
        keys[2:2] = [f"{history.metric}_std", "seeds"]
    if any("epsilon" in row for row in history.rows):
        keys.append("epsilon")
    return [{k: row.get(k) for k in keys} for row in history.rows]


EMPTY_NOTES = {  # why a panel stays empty: the runs hold nothing it could draw
    "upload": "no bits per masked weight in these runs\n(metrics-log-only baselines upload float tensors)",
    "density": "no final global to read densities from\n(metrics-log-only runs)",
}


def plot(histories: list[RunHistory], path: str) -> None:
    """Write the report picture (see :func:`figure`) as a PNG."""
    import matplotlib.pyplot as plt

    fig = figure(histories)
    buffer = __import__("io").BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    storage.write_atomic(path, buffer.getvalue(), force=True)


def figure(histories: list[RunHistory]):
    """The report picture: metric and loss per round, metric against cumulative uploaded bytes,
    upload size per round, final densities; a panel no run has data for says so instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 3, figsize=(17, 8), constrained_layout=True)
    (ax_metric, ax_loss, ax_bytes), (ax_upload, ax_density, ax_spare) = axes
    ax_spare.axis("off")
    ax_eps = None
    for h in histories:
        rounds = [r["round"] for r in h.rows]
        label = h.run_dir.rstrip("/").rsplit("/", 1)[-1] + (f" ({h.seeds} seeds)" if h.seeds > 1 else "")
        values = [r.get(h.metric) for r in h.rows]
        line = ax_metric.plot(rounds, values, marker="o", label=label)[0]
        sent = [r.get("cumulative_upload_bytes") for r in h.rows]
        ax_bytes.plot(sent, values, marker="o", label=label, color=line.get_color())
        if h.seeds > 1:
            spread = [r.get(f"{h.metric}_std", 0.0) for r in h.rows]
            low = [v - d for v, d in zip(values, spread)]
            high = [v + d for v, d in zip(values, spread)]
            ax_metric.fill_between(rounds, low, high, alpha=0.2, color=line.get_color())
            ax_bytes.fill_between(sent, low, high, alpha=0.2, color=line.get_color())
        ax_loss.plot(rounds, [r.get("loss") for r in h.rows], marker="o", label=label)
        up = [(r["round"], r["bits_per_weight"]) for r in h.rows if r.get("bits_per_weight") is not None]
        if up:
            ax_upload.plot([u[0] for u in up], [u[1] for u in up], marker="o", label=label)
        eps = [(r["round"], r["epsilon"]) for r in h.rows if r.get("epsilon") is not None]
        if eps:  # privacy spent, cumulative, on the metric's plot (right axis)
            ax_eps = ax_eps or ax_metric.twinx()
            ax_eps.plot([e[0] for e in eps], [e[1] for e in eps], linestyle="--", marker="x", label=f"{label} ε")
            ax_eps.set_ylabel("ε (cumulative, dashed)")
        names = list(h.final_densities)
        if names:  # a metrics-log-only baseline has no global to read densities from
            ax_density.plot(range(len(names)), [h.final_densities[n] for n in names], marker=".", label=label)
    metric = histories[0].metric
    ax_metric.set(title=f"eval {metric} per round", xlabel="round", ylabel=metric)
    ax_loss.set(title="eval loss per round", xlabel="round", ylabel="loss")
    ax_bytes.set(title=f"eval {metric} against uploads", xlabel="cumulative client upload (bytes)", ylabel=metric)
    sent = [r.get("cumulative_upload_bytes") or 0 for h in histories for r in h.rows]
    positive = [b for b in sent if b > 0]
    if positive and max(positive) > 100 * min(positive):  # masks against float uploads: orders of magnitude apart
        ax_bytes.set_xscale("symlog", linthresh=min(positive))
    ax_upload.set(title="mean client upload per round", xlabel="round", ylabel="bits per masked weight")
    ax_density.set(title="final global density per target module", xlabel="target module (model order)", ylabel="density")
    for ax, note in ((ax_upload, EMPTY_NOTES["upload"]), (ax_density, EMPTY_NOTES["density"])):
        if not ax.lines:
            ax.axis("off")
            ax.text(0.5, 0.5, f"{ax.get_title()}:\n{note}", ha="center", va="center", transform=ax.transAxes,
                    color="gray")
    for ax in axes.flat:
        if not ax.axison:
            continue
        ax.grid(alpha=0.3)
        if ax not in (ax_density, ax_bytes):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return fig
