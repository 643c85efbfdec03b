"""Seeds: `run --seeds` (one run dir per seed) and `report` mean ± std across them."""

from __future__ import annotations

import math

import pytest
import yaml
from typer.testing import CliRunner

from supermask_cli import report, seeds
from supermask_cli.cli import app
from supermask_cli.config import Config
from supermask_cli.errors import SupermaskError


def test_parse_seeds():
    assert seeds.parse_seeds("0,1, 2") == [0, 1, 2]
    for bad in ("0,x", "1,1", "", "-1"):
        with pytest.raises(SupermaskError, match="--seeds"):
            seeds.parse_seeds(bad)


def test_seed_configs_replace_seed_and_run_dir_only():
    cfg = Config(run_dir="runs/a/", seed=7)
    out = seeds.seed_configs(cfg, [0, 3])
    assert [(c.seed, c.run_dir) for c in out] == [(0, "runs/a/seed_0"), (3, "runs/a/seed_3")]
    assert out[0].model_dump(exclude={"seed", "run_dir"}) == cfg.model_dump(exclude={"seed", "run_dir"})


def test_mean_std_is_the_sample_deviation():
    mean, std = seeds.mean_std([0.8, 0.9, 0.7])
    assert math.isclose(mean, 0.8) and math.isclose(std, 0.1)  # sqrt((.01 + .01 + 0) / 2)
    assert seeds.mean_std([0.5]) == (0.5, 0.0)


def test_merge_rows_keeps_rounds_every_seed_reached():
    a = [{"round": 0, "accuracy": 0.5, "note": "x"}, {"round": 1, "accuracy": 0.7}, {"round": 2, "accuracy": 0.9}]
    b = [{"round": 0, "accuracy": 0.6, "note": "y"}, {"round": 1, "accuracy": 0.9}]
    merged = seeds.merge_rows([a, b])
    assert [r["round"] for r in merged] == [0, 1]
    assert merged[1]["seeds"] == 2 and math.isclose(merged[1]["accuracy"], 0.8)
    assert math.isclose(merged[1]["accuracy_std"], math.sqrt(0.02))
    assert "note" not in merged[0]  # non-numbers are dropped, not averaged


def test_merge_rows_keeps_integer_counts_integer_when_their_mean_is_whole():
    a = [{"round": 0, "upload_bytes": 0, "examples": 3, "accuracy": 1.0}]
    b = [{"round": 0, "upload_bytes": 0, "examples": 4, "accuracy": 1.0}]
    row = seeds.merge_rows([a, b])[0]
    assert row["upload_bytes"] == 0 and isinstance(row["upload_bytes"], int)
    assert row["examples"] == 3.5  # a fractional mean of counts stays a float
    assert isinstance(row["accuracy"], float)  # floats stay floats even when whole


def test_cumulative_upload_counts_bytes_sent_before_each_global():
    rows = [{"round": 0, "upload_bytes": 10}, {"round": 1, "upload_bytes": 5}, {"round": 2}]
    assert [r["cumulative_upload_bytes"] for r in report.with_cumulative_upload(rows)] == [0, 10, 15]


def test_run_seeds_then_report_mean_and_std(tiny_config, tmp_path):
    # Prepare
    runner = CliRunner()
    config = tiny_config("threshold", federation={"num_clients": 2, "rounds": 1})
    parent = yaml.safe_load(config.read_text())["run_dir"]
    # Execute
    result = runner.invoke(app, ["run", "--config", str(config), "--seeds", "0,1"])
    assert result.exit_code == 0, result.output
    shown = runner.invoke(app, ["report", parent, "--compare", f"{parent}/seed_1"])
    # Assert: one run dir per seed with its own seed; the parent reads as 2 seeds
    assert shown.exit_code == 0, shown.output
    for s in (0, 1):
        assert yaml.safe_load((tmp_path / "run_threshold" / f"seed_{s}" / "config.yaml").read_text())["seed"] == s
    history = report.load_history(parent)
    assert history.seeds == 2 and [r["round"] for r in history.rows] == [0, 1]
    single = [report.load_history(f"{parent}/seed_{s}") for s in (0, 1)]
    expected = seeds.mean_std([h.rows[1]["accuracy"] for h in single])
    assert math.isclose(history.rows[1]["accuracy"], expected[0]) and math.isclose(history.rows[1]["accuracy_std"], expected[1])
    assert history.rows[1]["cumulative_upload_bytes"] > 0 == history.rows[0]["cumulative_upload_bytes"]
    assert "accuracy_std" in shown.output and (tmp_path / "run_threshold" / "report.png").read_bytes().startswith(b"\x89PNG")
