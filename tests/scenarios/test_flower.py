"""The Flower app through a real local deployment (scripts/flower_local.sh): same globals as
``run``, and a SuperNode killed mid-round. Needs the Flower environment (scripts/flower_env.sh):
skipped without it, unless SUPERMASK_FLOWER_TESTS=1, where its absence is a failure."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from supermask_cli import checkpoint, steps
from supermask_cli.config import load_config

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("SUPERMASK_FLOWER_VENV", REPO / ".venv-flower"))
SCRIPT_TIMEOUT = 900


@pytest.fixture
def flower_env():
    if (VENV / "bin" / "flwr").exists():
        return VENV
    if os.environ.get("SUPERMASK_FLOWER_TESTS") == "1":
        pytest.fail(f"SUPERMASK_FLOWER_TESTS=1 but no Flower environment at {VENV}; run scripts/flower_env.sh")
    pytest.skip(f"no Flower environment at {VENV} (scripts/flower_env.sh builds it)")


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _start(config: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(REPO / "scripts" / "flower_local.sh"), "--config", str(config), *args],
        cwd=config.parent, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_processes_left(run_dir: Path) -> None:
    for pid_file in (run_dir / "flower" / "pids").glob("*.pid"):
        with pytest.raises(ProcessLookupError):
            os.killpg(int(pid_file.read_text()), 0)


def test_flower_local_gives_the_globals_of_run(flower_env, tiny_config, tmp_path):
    config = tiny_config("bernoulli", federation={"num_clients": 3, "rounds": 2})
    proc = _start(config, "--round-timeout", "600")
    out, _ = proc.communicate(timeout=SCRIPT_TIMEOUT)
    assert proc.returncode == 0, out
    run_dir = tmp_path / "run_bernoulli"

    reference = load_config(config, [f"run_dir={tmp_path / 'reference'}"])
    steps.run(reference)

    for rnd in (1, 2):
        assert _sha(run_dir / f"round_{rnd:03d}" / "global.safetensors") == _sha(
            tmp_path / "reference" / f"round_{rnd:03d}" / "global.safetensors"
        )
    assert steps.read_participants(str(run_dir / "round_001" / "participants.json")) == [0, 1, 2]
    rounds = [json.loads(line) for line in (run_dir / "flower" / "rounds.jsonl").read_text().splitlines()]
    assert [r["delta"] for r in rounds] == [[], [0, 1, 2]]  # round 1's global travels as a delta
    assert all(r["down"]["0"] < rounds[0]["down"]["0"] for r in rounds[1:])
    metrics = json.loads((run_dir / "round_001" / "metrics.json").read_text())
    assert metrics["download_bytes"] == rounds[1]["down"]["0"]
    _no_processes_left(run_dir)
    report = subprocess.run(
        [sys.executable, "-m", "supermask_cli", "report", str(run_dir)], env={**_env(), "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=300,
    )
    assert report.returncode == 0 and "download_bits_per_weight" in report.stdout, report.stdout + report.stderr


@pytest.mark.parametrize("min_clients", [2, 3])
def test_a_supernode_killed_mid_round(flower_env, tiny_config, tmp_path, min_clients):
    """Client 2's SuperNode dies as round 0's clients are sent their work: with min_clients 2 the
    round aggregates the other two; with 3 the run fails with one line naming the round and client."""
    config = tiny_config("threshold", federation={"num_clients": 3, "rounds": 1, "min_clients": min_clients})
    run_dir = tmp_path / "run_threshold"
    proc = _start(config, "--round-timeout", "240")
    deadline = time.monotonic() + SCRIPT_TIMEOUT
    while not (run_dir / "round_000" / "participants.json").exists():  # written just before the work is sent
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.1)
    os.killpg(int((run_dir / "flower" / "pids" / "supernode_2.pid").read_text()), signal.SIGKILL)
    out, _ = proc.communicate(timeout=SCRIPT_TIMEOUT)

    if min_clients == 2:
        assert proc.returncode == 0, out
        agg = checkpoint.read_meta(str(run_dir / "round_001" / "global.safetensors")).aggregation
        assert [c.client for c in agg.clients] == [0, 1]
        assert "aggregating 2 of 3 clients" in (run_dir / "flower" / "logs" / "flwr_run.log").read_text()
    else:
        assert proc.returncode == 1, out
        last = out.strip().splitlines()[-1]
        assert "round 0: 2 of 3 sampled clients uploaded, federation.min_clients is 3" in last, out
        assert "client 2:" in last
        assert not (run_dir / "round_001").exists()
    _no_processes_left(run_dir)


def test_flower_local_refuses_a_missing_config(flower_env, tmp_path):
    result = subprocess.run(
        [str(REPO / "scripts" / "flower_local.sh"), "--config", str(tmp_path / "nope.yaml")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "not found" in result.stderr


def test_node_config_uses_the_nodes_data_file(flower_env, tiny_config):
    """The ClientApp trains on the node's data file (data.client_train_file semantics)."""
    code = (
        "import yaml\n"
        "from flwr.app import Context, RecordDict\n"
        "from supermask_cli.launch.flower_client import node_config\n"
        f"text = open({str(tiny_config('threshold'))!r}).read()\n"
        "ctx = Context(run_id=1, node_id=1, node_config={'client-id': 1, 'data-file': '/site/train.tsv'},"
        " state=RecordDict(), run_config={})\n"
        "print(node_config(text, ctx).data.client_train_file)\n"
    )
    out = subprocess.run([str(VENV / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "/site/train.tsv", out.stderr
    assert yaml.safe_load(open(tiny_config("threshold")))["data"].get("client_train_file") is None
