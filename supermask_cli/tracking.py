"""Optional experiment tracking of a run: TensorBoard (``tensorboard: true``; the ``tensorboard``
extra) and MLflow (``tracking: mlflow``; the ``mlflow`` extra)."""

from __future__ import annotations

import math
import os
import time
from typing import Any

from . import report
from .errors import SupermaskError


class TensorBoardLog:
    """Scalars under ``<run_dir>/tensorboard``: eval metrics and uploads per round, loss per client."""

    def __init__(self, log_dir: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise SupermaskError(
                "tensorboard: true needs the tensorboard package: pip install -e '.[tensorboard]'"
            ) from None
        self._writer = SummaryWriter(log_dir=log_dir)

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._writer.add_scalar(f"{prefix}/{key}", value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def flat_params(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config mapping as ``section.key`` -> text (MLflow params are strings)."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, name + "."))
        else:
            out[name] = "null" if value is None else str(value)
    return out


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v) for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


class MlflowLog:
    """An MLflow run per run directory (``tracking: mlflow``; needs the ``mlflow`` extra): the config
    as params, per-round metrics, artifacts. The store is ``tracking_uri`` or the local file store
    ``<run_dir>/mlruns``; the MLflow run id is kept in ``<run_dir>/mlflow_run_id`` so that a resumed
    ``supermask run`` continues the same MLflow run."""

    EXPERIMENT = "supermask"
    ID_FILE = "mlflow_run_id"
    BATCH = 100  # MLflow's limit of params per log_batch call

    def __init__(self, run_dir: str, uri: str | None, params: dict[str, Any]) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise SupermaskError("tracking: mlflow needs the mlflow package: pip install -e '.[mlflow]'") from None
        from . import storage

        if uri is None:
            # MLflow 3 keeps the file store in maintenance mode behind this opt-in; a database
            # store needs the full mlflow package (SQLAlchemy, alembic), a file store does not.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = "file://" + os.path.abspath(os.path.join(run_dir, "mlruns"))
        self._client = MlflowClient(tracking_uri=uri)
        id_path = storage.join(run_dir, self.ID_FILE)
        if storage.exists(id_path):
            self.run_id = storage.read_bytes(id_path, 1024, what="MLflow run id").decode().strip()
            self._client.update_run(self.run_id, status="RUNNING")
            return
        experiment = self._client.get_experiment_by_name(self.EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else self._client.create_experiment(self.EXPERIMENT)
        name = run_dir.rstrip("/").rsplit("/", 1)[-1]
        self.run_id = self._client.create_run(experiment_id, run_name=name, tags={"supermask.run_dir": run_dir}).info.run_id
        storage.write_text_atomic(id_path, self.run_id + "\n", force=True)
        self.params(params)

    def params(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in sorted(flat_params(config).items())]
        for start in range(0, len(items), self.BATCH):
            self._client.log_batch(self.run_id, params=items[start : start + self.BATCH])

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(f"{prefix}/{k}", v, stamp, step) for k, v in sorted(_numbers(values).items())]
        if metrics:
            self._client.log_batch(self.run_id, metrics=metrics)

    def artifact(self, path: str) -> None:
        self._client.log_artifact(self.run_id, path)

    def finish(self, run_dir: str) -> None:
        """Log the run's ``report.png`` (as ``supermask report`` draws it) and end the MLflow run."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "report.png")
            report.plot([report.load_history(run_dir)], path)
            self.artifact(path)
        self._client.set_terminated(self.run_id)


def mlflow_for(cfg) -> MlflowLog | None:
    """The MLflow log of a run when its config says ``tracking: mlflow``."""
    if cfg.tracking != "mlflow":
        return None
    return MlflowLog(cfg.run_dir, cfg.tracking_uri, cfg.model_dump(mode="json"))
