"""Repeating a run over seeds: one run directory per seed, ``<run_dir>/seed_<s>``, and the
per-round mean and standard deviation across them.

``supermask run --seeds 0,1,2`` runs the config once per seed with ``seed`` and ``run_dir``
replaced; ``supermask report <run_dir>`` on the parent directory finds the ``seed_*`` runs and
reports each round's mean ± sample standard deviation (n − 1) over the seeds that reached it.
"""

from __future__ import annotations

import math
import re
from typing import Any

from . import storage
from .config import Config
from .errors import SupermaskError

SEED_DIR = "seed_{seed}"
_SEED_RE = re.compile(r"^seed_(\d+)$")


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; duplicates and non-integers are user errors."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SupermaskError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise SupermaskError(f"--seeds {text!r}: expected distinct non-negative integers, e.g. 0,1,2")
    return seeds


def seed_run_dir(run_dir: str, seed: int) -> str:
    return storage.join(run_dir, SEED_DIR.format(seed=seed))


def seed_configs(cfg: Config, seeds: list[int]) -> list[Config]:
    """One config per seed: same everything, ``seed`` replaced, ``run_dir`` = ``<run_dir>/seed_<s>``."""
    return [cfg.model_copy(update={"seed": s, "run_dir": seed_run_dir(cfg.run_dir, s)}) for s in seeds]


def seed_dirs(run_dir: str) -> list[str]:
    """The ``seed_<s>`` run directories directly under ``run_dir`` (by seed), or [] if none."""
    found = [(_SEED_RE.match(name), name) for name in storage.listdir(run_dir)]
    return [storage.join(run_dir, name) for m, name in sorted(found, key=lambda f: int(f[0].group(1)) if f[0] else -1) if m]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1; 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def merge_rows(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per-round rows of several seeds -> one row per round every seed reached: numeric fields
    averaged, ``<field>_std`` their standard deviation, ``seeds`` the count."""
    by_round = [{row["round"]: row for row in rows} for rows in runs]
    common = sorted(set.intersection(*(set(r) for r in by_round))) if by_round else []
    merged = []
    for rnd in common:
        rows = [r[rnd] for r in by_round]
        out: dict[str, Any] = {"round": rnd, "seeds": len(rows)}
        for key in rows[0]:
            values = [row.get(key) for row in rows]
            if key == "round" or not all(_is_number(v) for v in values):
                continue
            mean, out[f"{key}_std"] = mean_std([float(v) for v in values])
            # counts (bytes, examples) stay integers when their mean is one, so tables print 0 not 0.0000
            out[key] = int(mean) if all(isinstance(v, int) for v in values) and mean.is_integer() else mean
        merged.append(out)
    return merged


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
