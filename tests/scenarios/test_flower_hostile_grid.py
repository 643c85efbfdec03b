"""The defects issue 22 reproduced, through real flwr Messages and the real ServerApp and ClientApp
functions (helpers/flower_hostile_grid.py, in the Flower environment): a train reply without its
result record, an upload of the wrong record type, a non-integer client-id, a 50 MiB upload with a
valid header, and a replayed round-0 upload in round 1. Each is refused with the node named; the
run finishes with the honest clients. Skipped without the Flower environment, unless
SUPERMASK_FLOWER_TESTS=1, where its absence is a failure."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config_dict
from supermask_cli import checkpoint

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("SUPERMASK_FLOWER_VENV", REPO / ".venv-flower"))


@pytest.fixture
def flower_python() -> Path:
    if (VENV / "bin" / "flwr").exists():
        return VENV / "bin" / "python"
    if os.environ.get("SUPERMASK_FLOWER_TESTS") == "1":
        pytest.fail(f"SUPERMASK_FLOWER_TESTS=1 but no Flower environment at {VENV}; run scripts/flower_env.sh")
    pytest.skip(f"no Flower environment at {VENV} (scripts/flower_env.sh builds it)")


def test_the_reproduced_defects_are_refused_and_the_run_finishes(flower_python, tiny_model, tiny_data, tmp_path):
    # Prepare: 4 clients, 2 rounds, two honest clients suffice
    run_dir = tmp_path / "run"
    raw = tiny_config_dict(run_dir, tiny_model, tiny_data, "threshold")
    raw["federation"].update(num_clients=4, rounds=2, min_clients=2)
    raw["train"]["max_steps"] = 2
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))

    # Execute
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([str(flower_python), str(REPO / "tests" / "scenarios" / "helpers" / "flower_hostile_grid.py"),
                           str(config), str(tmp_path)], capture_output=True, text=True, timeout=900, env=env)

    # Assert: no traceback, a status saying done, one refusal per bad message naming its node
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"exit": 0, "traceback": ""}, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = json.loads((run_dir / "flower" / "status.json").read_text())
    assert status["state"] == "done", status
    refused = status["refused"]
    expected = {
        "node 14: client-id 'four' is not an integer",
        "node 12 (client 2): train reply: missing record(s) result",
        "node 13 (client 3): train reply: record 'upload' is a config record, not array",
        "node 12 (client 2): upload: 52428800 bytes, over the",
        "node 13 (client 3): was coded against another global",
    }
    for line in expected:
        assert any(r.startswith(line) for r in refused), (line, refused)
    assert all(any(r.startswith(line) for line in expected) for r in refused), refused  # asked again: repeats
    for rnd in (1, 2):
        agg = checkpoint.read_meta(str(run_dir / f"round_{rnd:03d}" / "global.safetensors")).aggregation
        assert sorted(c.client for c in agg.clients) == [0, 1]
        assert sorted(p.name for p in (run_dir / f"round_{rnd - 1:03d}" / "clients").iterdir()) == [
            "client_000.safetensors", "client_001.safetensors"]
    # the replayed upload is kept out of the round, with its reason
    reason = (run_dir / "round_001" / "rejected" / "client_003.reason.txt").read_text()
    assert reason.startswith("node 13 (client 3): was coded against another global")
    assert (run_dir / "round_001" / "rejected" / "client_003.safetensors").is_file()
