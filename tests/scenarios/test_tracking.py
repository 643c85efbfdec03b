"""MLflow tracking (``tracking: mlflow``): params, per-round metrics, report.png; skipped without mlflow."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from supermask_cli import tracking
from supermask_cli.cli import app
from supermask_cli.errors import SupermaskError


def test_flat_params_names_nested_keys_and_keeps_nulls():
    tree = {"seed": 0, "federation": {"num_clients": 2, "server_betas": [0.9, 0.99]}, "task": None}
    assert tracking.flat_params(tree) == {
        "seed": "0", "federation.num_clients": "2", "federation.server_betas": "[0.9, 0.99]", "task": "null",
    }


def test_missing_mlflow_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)  # makes `import mlflow.tracking` fail
    with pytest.raises(SupermaskError, match=r"pip install -e '\.\[mlflow\]'"):
        tracking.MlflowLog(str(tmp_path), None, {})


def test_run_logs_config_metrics_and_report_to_mlflow(tiny_config, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    # Prepare
    config = tiny_config("threshold", federation={"num_clients": 2, "rounds": 1}, tracking="mlflow")
    run_dir = tmp_path / "run_threshold"
    # Execute: run, then run again (resume: every round is done already)
    for _ in range(2):
        result = CliRunner().invoke(app, ["run", "--config", str(config)])
        assert result.exit_code == 0, result.output
    # Assert: one MLflow run in <run_dir>/mlruns with the config, both rounds and the picture
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    client = MlflowClient(tracking_uri=f"file://{run_dir / 'mlruns'}")
    runs = client.search_runs([client.get_experiment_by_name("supermask").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["federation.num_clients"] == "2" and run.data.params["mask.kind"] == "threshold"
    steps = sorted({m.step for m in client.get_metric_history(run_id, "eval/accuracy")})
    assert steps == [0, 1]
    assert "round/bits_per_weight" in run.data.metrics
    assert [a.path for a in client.list_artifacts(run_id)] == ["report.png"]
