"""What every command shares: the Typer app, the common options, one-line errors and tables."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..config import Config, load_config
from ..console import console as err_console
from ..errors import SupermaskError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
    help="Federated supermask fine-tuning: frozen pretrained weights, learned masks, rounds chained through files.",
)
out = Console(width=None if sys.stdout.isatty() else 160)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a config value: key.sub=value (repeatable).")
]
RoundOpt = Annotated[Optional[int], typer.Option("--round", "-r", help="Round (default: latest with a global file).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the project's errors into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SupermaskError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; outputs are written atomically, re-run the command to continue")
            raise typer.Exit(130) from None

    return wrapper


def read_config(path: Path, overrides: list[str] | None) -> Config:
    return load_config(path, overrides or [])


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for key in rows[0] if rows else []:
        table.add_column(key, justify="right" if key != "module" else "left")
    for row in rows:
        table.add_row(*(fmt(v) for v in row.values()))
    return table

SecretsOpt = Annotated[
    Optional[Path],
    typer.Option("--secrets", help="Secure aggregation: this client's private directory, outside run_dir (default: ~/.supermask/secagg/<run id>/client-<i>)."),
]
