"""scripts/federated_rounds.sh drives rounds with the four subcommands, clients in parallel."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "federated_rounds.sh"


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=os.environ.copy(), capture_output=True,
                          text=True, timeout=300)


def test_two_rounds_with_parallel_clients_then_rerun_is_a_no_op(tiny_config, tmp_path):
    # Prepare
    config = tiny_config("threshold", federation={"num_clients": 3, "rounds": 5})
    run_dir = Path(yaml.safe_load(config.read_text())["run_dir"])

    # Execute: 2 rounds (overriding the config's 5), 2 clients at a time
    result = run_script("--config", str(config), "--rounds", "2", "--jobs", "2", cwd=tmp_path)

    # Assert
    assert result.returncode == 0, result.stderr
    for rnd in range(3):
        assert (run_dir / f"round_{rnd:03d}" / "global.safetensors").is_file()
        assert json.loads((run_dir / f"round_{rnd:03d}" / "metrics.json").read_text())["round"] == rnd
    for rnd in range(2):
        assert sorted(p.name for p in (run_dir / f"round_{rnd:03d}" / "clients").iterdir()) == [
            "client_000.safetensors", "client_001.safetensors", "client_002.safetensors"]
    assert not (run_dir / "round_003").exists()
    before = {p: p.read_bytes() for p in run_dir.rglob("*.safetensors")}

    again = run_script("--config", str(config), "--rounds", "2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "training" not in again.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*.safetensors")} == before


def test_missing_config_argument_exits_2(tmp_path):
    result = run_script("--jobs", "2", cwd=tmp_path)
    assert result.returncode == 2
    assert "--config is required" in result.stderr
