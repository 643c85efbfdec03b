"""Rich progress bars for long loops (loss, examples/s, ETA) and the shared console."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class StepProgress:
    """One bar: ``advance(examples, loss)`` after every batch."""

    def __init__(self, progress: Progress | None, task_id: int | None) -> None:
        self._progress = progress
        self._task = task_id
        self._start = time.perf_counter()
        self.examples = 0
        self.loss_sum = 0.0
        self.loss_count = 0

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    @property
    def examples_per_s(self) -> float:
        return self.examples / max(self.elapsed, 1e-9)

    def advance(self, examples: int, loss: float | None = None) -> None:
        self.examples += examples
        if loss is not None:
            self.loss_sum += loss
            self.loss_count += 1
        if self._progress is not None and self._task is not None:
            avg = self.loss_sum / self.loss_count if self.loss_count else float("nan")
            self._progress.update(self._task, advance=1, loss=f"{avg:.4f}", rate=f"{self.examples_per_s:.1f}")


@contextmanager
def step_progress(description: str, total: int) -> Iterator[StepProgress]:
    """A transient bar on stderr (hidden when stderr is not a terminal, e.g. in CI logs)."""
    enabled = sys.stderr.isatty()
    if not enabled:
        yield StepProgress(None, None)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]} ex/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task_id = progress.add_task(description, total=total, loss="-", rate="-")
        yield StepProgress(progress, task_id)
