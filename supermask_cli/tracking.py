"""Optional TensorBoard logging of a run (``tensorboard: true``; needs the ``tensorboard`` extra)."""

from __future__ import annotations

import math
from typing import Any

from .errors import SupermaskError


class TensorBoardLog:
    """Scalars under ``<run_dir>/tensorboard``: eval metrics and uploads per round, loss per client."""

    def __init__(self, log_dir: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise SupermaskError(
                "tensorboard: true needs the tensorboard package: pip install 'supermask-cli[tensorboard]'"
            ) from None
        self._writer = SummaryWriter(log_dir=log_dir)

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._writer.add_scalar(f"{prefix}/{key}", value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
