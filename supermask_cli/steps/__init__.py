"""The step API: one plain function per step, taking a Config plus explicit inputs and outputs.

Every launcher calls these and nothing below them: the CLI, ``run``, the Slurm launcher, the
Flower apps and the benchmarks. Modules: ``pool`` (which examples a client or the evaluation
sees), ``checks`` (run-level checks), ``participants`` (who trains in a round), one module per
step (``initialize``, ``training``, ``aggregation``, ``evaluation``, ``runner``, ``inspection``
with ``export``) and ``runlog`` (``metrics.jsonl``).
"""

from ..runlog import AggregateResult, round_rows, write_metrics_log
from .aggregation import aggregate
from .checks import (
    check_base_matches,
    check_client,
    derive_seed,
    load_base,
    load_global,
    open_round,
)
from .evaluation import evaluate
from .initialize import InitResult, init
from .inspection import export, inspect
from .participants import read_participants, sampled, write_participants
from .pool import (
    client_examples,
    eval_examples,
    examples_digest,
    metric_names,
    resolve_label_names,
    resolved,
    train_pool,
)
from .runner import RoundSummary, run
from .training import ClientResult, train_client

__all__ = [
    "AggregateResult", "ClientResult", "InitResult", "RoundSummary", "aggregate", "check_base_matches",
    "check_client", "client_examples", "derive_seed", "eval_examples", "evaluate", "examples_digest", "export",
    "init", "inspect", "load_base", "load_global", "metric_names", "open_round", "read_participants",
    "resolve_label_names", "resolved", "round_rows", "run", "sampled", "train_client", "train_pool",
    "write_metrics_log", "write_participants",
]
