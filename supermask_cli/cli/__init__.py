"""The ``supermask`` command line: each command parses options and calls one step (``supermask_cli.steps``).

Commands live by what they do: ``rounds`` (init, train-client, aggregate, eval, run), ``files``
(inspect, export, report, progress), ``privacy_audit`` (audit), ``cluster`` (slurm), ``secagg``
(the secure-aggregation client steps); ``common`` holds the app and the shared options.
"""

from __future__ import annotations

# isort: off  (each module registers its commands; this order is --help's)
from . import rounds, files, privacy_audit, cluster, secagg  # noqa: F401, I001
# isort: on
from .common import app, user_errors

app.command("audit")(user_errors(privacy_audit.audit))
app.add_typer(secagg.app, name="secagg")


def main() -> None:
    app()
