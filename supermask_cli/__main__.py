"""``python -m supermask_cli`` runs the CLI."""

from .cli import app

app()
