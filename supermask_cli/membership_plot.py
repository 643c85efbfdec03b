"""The ROC picture of a membership-inference audit: each attack's curve on a log FPR axis, chance,
and where the checkpoint records (ε, δ), the most any attack can reach."""

from __future__ import annotations

import io

import numpy as np

from . import storage
from .membership import AttackResult, dp_tpr_bound


def figure(attacks: list[AttackResult], title: str, epsilon: float | None = None, delta: float | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5), constrained_layout=True)
    lowest = min(float(a.fpr[a.fpr > 0].min()) for a in attacks if (a.fpr > 0).any()) if attacks else 1e-3
    grid = np.logspace(np.log10(min(lowest, 1e-3)), 0, 200)
    for a in attacks:
        keep = a.fpr > 0
        ax.step(a.fpr[keep], a.tpr[keep], where="post", label=f"{a.name} attack (AUC {a.auc:.3f})")
    ax.plot(grid, grid, color="grey", linestyle=":", label="chance")
    if epsilon is not None and delta is not None:
        ax.plot(grid, dp_tpr_bound(grid, epsilon, delta), color="black", linestyle="--",
                label=f"DP bound (ε {epsilon:.3g}, δ {delta:.0e})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(grid[0], 1.0)
    ax.set_ylim(grid[0], 1.05)
    ax.set_xlabel("false positive rate (non-members called members)")
    ax.set_ylabel("true positive rate (members found)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot(attacks: list[AttackResult], path: str, title: str, epsilon: float | None = None,
         delta: float | None = None) -> None:
    """Write :func:`figure` as a PNG (any fsspec URL, replaced atomically)."""
    import matplotlib.pyplot as plt

    fig = figure(attacks, title, epsilon, delta)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    storage.write_atomic(path, buffer.getvalue(), force=True)
