"""The Flower ClientApp honours its node's privacy policy (node config ``privacy-policy``) and the
ServerApp logs a refusal naming the client; the ServerApp's rounds against the ClientApp in one
process (tests/scenarios/flower_loopback.py). Needs the Flower environment (scripts/flower_env.sh):
skipped without it, unless SUPERMASK_FLOWER_TESTS=1, where its absence is a failure."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from supermask_cli.checkpoint import read_meta
from supermask_cli.config import load_config
from supermask_cli.layout import Layout

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("SUPERMASK_FLOWER_VENV", REPO / ".venv-flower"))
EXAMPLE = {"mode": "example", "noise_multiplier": 1.0, "max_grad_norm": 1.0}  # ε 4.871 a round


@pytest.fixture
def flower_env():
    if (VENV / "bin" / "flwr").exists():
        return VENV
    if os.environ.get("SUPERMASK_FLOWER_TESTS") == "1":
        pytest.fail(f"SUPERMASK_FLOWER_TESTS=1 but no Flower environment at {VENV}; run scripts/flower_env.sh")
    pytest.skip(f"no Flower environment at {VENV} (scripts/flower_env.sh builds it)")


def _policy(path: Path, **privacy) -> str:
    path.write_text(yaml.safe_dump({"privacy": {"mode": "example", **privacy}}))  # ledger: the node's work dir
    return str(path)


def _loopback(venv: Path, tmp_path: Path, **spec) -> dict:
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps({"work": str(tmp_path / "nodes"), **spec}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([str(venv / "bin" / "python"), str(REPO / "tests" / "scenarios" / "flower_loopback.py"),
                           str(spec_path)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_client_app_refuses_a_servers_privacy_off_config_and_the_server_logs_it(flower_env, tiny_config, tmp_path):
    config = tiny_config("threshold", federation={"num_clients": 3, "rounds": 1, "min_clients": 2})
    policy = _policy(tmp_path / "policy.yaml", max_epsilon=5.0)
    out = _loopback(flower_env, tmp_path, config=str(config), policies={"0": policy}, action="serve")
    assert "error" not in out, out
    assert "supermask: round 0: client 0 refused:" in out["stdout"] and "privacy.mode: the run asks for 'none'" in out["stdout"]
    run_dir = Path(load_config(config).run_dir)
    assert [c.client for c in read_meta(str(run_dir / "round_001" / "global.safetensors")).aggregation.clients] == [1, 2]
    (row,) = [json.loads(line) for line in (run_dir / "flower" / "rounds.jsonl").read_text().splitlines()]
    assert "privacy.mode" in row["refused"]["0"]
    assert not (tmp_path / "nodes" / "client_0" / "ledger").exists() or not list((tmp_path / "nodes" / "client_0" / "ledger").glob("*.json"))


def test_a_server_repeating_a_round_gets_the_same_upload_and_one_release(flower_env, tiny_config, tmp_path):
    config = tiny_config("threshold", federation={"num_clients": 3, "rounds": 1}, privacy=EXAMPLE)
    policy = _policy(tmp_path / "policy.yaml", max_epsilon=5.0)
    out = _loopback(flower_env, tmp_path, config=str(config), policies={"0": policy}, action="repeat", repeat=3)
    assert "error" not in out and out["failures"] == [{}, {}, {}], out
    assert len(set(out["uploads"])) == 1 and out["uploads"][0] is not None
    ledgers = list((tmp_path / "nodes" / "client_0" / "ledger").glob("*.json"))  # kept in the node's work dir
    (ledger,) = ledgers
    assert [r["round"] for r in json.loads(ledger.read_text())["releases"]] == [0]


def test_client_mode_rounds_log_no_upload_sizes(flower_env, tiny_config, tmp_path):
    config = tiny_config("threshold", federation={"num_clients": 2, "rounds": 1},
                         privacy={"mode": "client", "noise_multiplier": 1.0, "max_flips": 16})
    out = _loopback(flower_env, tmp_path, config=str(config), action="serve")
    assert "error" not in out, out
    (row,) = [json.loads(line) for line in (Path(load_config(config).run_dir) / "flower" / "rounds.jsonl").read_text().splitlines()]
    assert "up" not in row and set(row["down"]) == {"0", "1"}
    assert Layout(load_config(config).run_dir).uploads(0)
