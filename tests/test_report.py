"""`supermask report`: per-round table and report.png from run directories."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from supermask_cli.cli import app


def test_report_writes_picture_and_table(tiny_config, tmp_path):
    # Prepare: two finished tiny runs
    runner = CliRunner()
    configs = [tiny_config("threshold", federation={"num_clients": 2, "rounds": 1}),
               tiny_config("scaling", federation={"num_clients": 2, "rounds": 1})]
    run_dirs = []
    for path in configs:
        result = runner.invoke(app, ["run", "--config", str(path)])
        assert result.exit_code == 0, result.output
        run_dirs.append(yaml.safe_load(path.read_text())["run_dir"])

    # Execute
    result = runner.invoke(app, ["report", run_dirs[0], "--compare", run_dirs[1]])

    # Assert: a PNG with both runs, and a row per evaluated round in each table
    assert result.exit_code == 0, result.output
    png = (tmp_path / "run_threshold" / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert result.output.count("accuracy") == 2
    assert "bits_per_weight" in result.output


def test_report_on_a_non_run_directory_is_a_user_error(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "holds no round_" in result.output


def test_run_logs_to_tensorboard_when_enabled(tiny_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config("threshold", federation={"num_clients": 2, "rounds": 1}, tensorboard=True)
    result = CliRunner().invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output

    events = EventAccumulator(str(tmp_path / "run_threshold" / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "eval/accuracy" in tags and "round/bits_per_weight" in tags and "client_001/mean_loss" in tags
    assert [e.step for e in events.Scalars("eval/accuracy")] == [0, 1]


def test_metrics_log_carries_each_rounds_uploads(tiny_config, tmp_path):
    config = tiny_config("threshold", federation={"num_clients": 2, "rounds": 1})
    assert CliRunner().invoke(app, ["run", "--config", str(config)]).exit_code == 0
    rows = [json.loads(line) for line in (tmp_path / "run_threshold" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1]
    clients = sorted((tmp_path / "run_threshold" / "round_000" / "clients").iterdir())
    assert rows[0]["upload_bytes"] == sum(p.stat().st_size for p in clients)
    assert rows[0]["upload_clients"] == 2 and 0 < rows[0]["bits_per_weight"] <= 8
    assert "upload_bytes" not in rows[1]
