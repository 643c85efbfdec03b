"""Launchers: thin shells over :mod:`supermask_cli.steps` (Slurm, Flower)."""
