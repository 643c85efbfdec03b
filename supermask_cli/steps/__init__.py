"""The step API every launcher calls (CLI, ``run``, Slurm, Flower, benchmarks)."""

from ..workflows import (  # noqa: F401  (being split into this package)
    AggregateResult,
    ClientResult,
    InitResult,
    RoundSummary,
    aggregate,
    evaluate,
    export,
    init,
    inspect,
    run,
    train_client,
)
