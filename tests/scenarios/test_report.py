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
    # a baseline outside the mask format: only a metrics.jsonl (as benchmarks/accuracy.py writes for FedAvg)
    baseline = tmp_path / "fedavg_full"
    baseline.mkdir()
    rows = [{"round": 1, "accuracy": 0.75, "loss": 0.5}, {"round": 0, "accuracy": 0.5, "loss": 0.69, "upload_bytes": 4096}]
    (baseline / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    # Execute
    result = runner.invoke(app, ["report", run_dirs[0], "--compare", run_dirs[1], "--compare", str(baseline)])

    # Assert: a PNG with all runs, and a row per evaluated round in each table
    assert result.exit_code == 0, result.output
    png = (tmp_path / "run_threshold" / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert result.output.count("accuracy") == 3
    assert "bits_per_weight" in result.output
    from supermask_cli.report import load_history

    history = load_history(str(baseline))  # rows by round, bytes accumulated as for a mask run
    assert [(r["round"], r["cumulative_upload_bytes"]) for r in history.rows] == [(0, 0), (1, 4096)]
    from supermask_cli.report import figure

    with_masks = figure([load_history(run_dirs[0]), history])  # the mask run fills every panel
    assert [ax.axison for ax in with_masks.axes] == [True, True, True, True, True, False]  # last: spare
    alone = figure([history])  # nothing for the upload and density panels: they say why instead
    assert [ax.axison for ax in alone.axes] == [True, True, True, False, False, False]
    assert "metrics-log-only" in alone.axes[3].texts[0].get_text()


def test_report_names_the_line_of_a_broken_metrics_log(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"round": 0, "accuracy": 0.5}\n{"round": 1, "accur\n')
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert f"{tmp_path / 'metrics.jsonl'}:2: not a JSON object" in result.output


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
