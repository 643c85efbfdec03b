"""scripts/flower_local.sh with hostile run dirs: refused with one line before anything starts, or
carried whole (spaces). Runs without Flower: a stand-in Flower environment whose python is this one
and whose SuperLink does not exist, so a run dir that passes gets as far as starting it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config_dict

REPO = Path(__file__).resolve().parents[2]


def fake_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "fake-flower"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / "bin" / "flwr").write_text("#!/bin/sh\nexit 3\n")
    (venv / "bin" / "flwr").chmod(0o755)
    return venv


def launch(tmp_path: Path, tiny_model, tiny_data, run_dir: Path) -> subprocess.CompletedProcess:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(run_dir, tiny_model, tiny_data, "threshold")))
    env = {**os.environ, "SUPERMASK_FLOWER_VENV": str(fake_venv(tmp_path)), "PYTHONPATH": str(REPO),
           "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(REPO / "scripts" / "flower_local.sh"), "--config", str(config)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["new\nline", 'dou"ble', "back\\slash", "esc\x1bape"])
def test_a_run_dir_the_node_config_cannot_carry_is_refused(tmp_path, tiny_model, tiny_data, name):
    result = launch(tmp_path, tiny_model, tiny_data, tmp_path / name)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flower_local.sh: run_dir "), result.stderr
    assert not (tmp_path / name).exists() and not list(tmp_path.glob("*/flower"))


def test_a_run_dir_with_spaces_is_carried_whole(tmp_path, tiny_model, tiny_data):
    run_dir = tmp_path / "with two spaces"
    result = launch(tmp_path, tiny_model, tiny_data, run_dir)
    assert result.returncode == 1 and "the SuperLink did not start" in result.stderr, result.stderr
    assert (run_dir / "flower" / "logs" / "superlink.log").is_file()
