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

from conftest import tiny_config_dict

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("SUPERMASK_FLOWER_VENV", REPO / ".venv-flower"))
EXAMPLE = {"mode": "example", "noise_multiplier": 1.0, "max_grad_norm": 1.0}  # ε 4.871 a round


@pytest.fixture(scope="module")
def flower_env():
    if (VENV / "bin" / "flwr").exists():
        return VENV
    if os.environ.get("SUPERMASK_FLOWER_TESTS") == "1":
        pytest.fail(f"SUPERMASK_FLOWER_TESTS=1 but no Flower environment at {VENV}; run scripts/flower_env.sh")
    pytest.skip(f"no Flower environment at {VENV} (scripts/flower_env.sh builds it)")


CASES = {  # name: (kind, config sections, {client: policy's privacy section}, action)
    "privacy_off": ("threshold", {"federation": {"num_clients": 3, "rounds": 1, "min_clients": 2}},
                    {0: {"max_epsilon": 5.0}}, {"action": "serve"}),
    "repeated": ("threshold", {"federation": {"num_clients": 3, "rounds": 1}, "privacy": EXAMPLE},
                 {0: {"max_epsilon": 5.0}}, {"action": "repeat", "repeat": 3}),
    "client_mode": ("threshold", {"federation": {"num_clients": 2, "rounds": 1},
                                  "privacy": {"mode": "client", "noise_multiplier": 1.0, "max_flips": 16}},
                    {}, {"action": "serve"}),
}


@pytest.fixture(scope="module")
def outcomes(flower_env, tiny_model, tiny_data, tmp_path_factory):
    """Every case through the loopback driver in one Flower-environment process: name -> (result, work dir, config)."""
    specs, where = [], {}
    for name, (kind, sections, policies, action) in CASES.items():
        work = tmp_path_factory.mktemp(name)
        raw = tiny_config_dict(work / "run", tiny_model, tiny_data, kind)
        for section, values in sections.items():
            raw.setdefault(section, {}).update(values)
        config = work / "config.yaml"
        config.write_text(yaml.safe_dump(raw))
        paths = {}
        for client, privacy in policies.items():  # no ledger key: the node's work dir keeps it
            paths[str(client)] = str(work / f"policy-{client}.yaml")
            Path(paths[str(client)]).write_text(yaml.safe_dump({"privacy": {"mode": "example", **privacy}}))
        specs.append({"config": str(config), "work": str(work / "nodes"), "policies": paths, **action})
        where[name] = (work, config)
    specs_path = tmp_path_factory.mktemp("specs") / "specs.json"
    specs_path.write_text(json.dumps(specs))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([str(flower_env / "bin" / "python"), str(REPO / "tests" / "scenarios" / "flower_loopback.py"),
                           str(specs_path)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    return {name: (result, *where[name]) for name, result in zip(CASES, results)}


def _rounds_log(config: Path) -> list[dict]:
    path = Path(load_config(config).run_dir) / "flower" / "rounds.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_client_app_refuses_a_servers_privacy_off_config_and_the_server_logs_it(outcomes):
    out, work, config = outcomes["privacy_off"]
    assert "error" not in out, out
    assert "supermask: round 0: client 0 refused:" in out["stdout"] and "privacy.mode: the run asks for 'none'" in out["stdout"]
    run_dir = Path(load_config(config).run_dir)
    assert [c.client for c in read_meta(str(run_dir / "round_001" / "global.safetensors")).aggregation.clients] == [1, 2]
    (row,) = _rounds_log(config)
    assert "privacy.mode" in row["refused"]["0"]
    assert not list((work / "nodes" / "client_0").glob("ledger/*.json"))  # refused before anything was recorded


def test_a_server_repeating_a_round_gets_the_same_upload_and_one_release(outcomes):
    out, work, _ = outcomes["repeated"]
    assert "error" not in out and out["failures"] == [{}, {}, {}], out
    assert len(set(out["uploads"])) == 1 and out["uploads"][0] is not None
    (ledger,) = (work / "nodes" / "client_0" / "ledger").glob("*.json")  # kept in the node's work dir
    assert [r["round"] for r in json.loads(ledger.read_text())["releases"]] == [0]


def test_client_mode_rounds_log_no_upload_sizes(outcomes):
    out, _, config = outcomes["client_mode"]
    assert "error" not in out, out
    (row,) = _rounds_log(config)
    assert "up" not in row and set(row["down"]) == {"0", "1"}
    assert Layout(load_config(config).run_dir).uploads(0)
