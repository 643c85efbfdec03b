"""`supermask progress`: which steps of a run are done, for local and URL run dirs."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from supermask_cli import storage
from supermask_cli.cli import app
from supermask_cli.config import load_config
from supermask_cli.sampling import participants
from supermask_cli.steps.progress import progress


def touch(path: str) -> None:
    storage.write_atomic(path, b"", force=True)


def test_progress_lists_outputs_and_missing_participants_of_a_url_run_dir():
    # Prepare: round 0 has a global and one participant's upload (plus a client that was not sampled)
    run_dir = "memory://progress-test/run"
    cfg = load_config(None, [f"run_dir={run_dir}", "federation.num_clients=5", "federation.clients_per_round=2",
                             "federation.rounds=2", "seed=3"])
    sampled = participants(5, 2, 3, 0)
    other = next(c for c in range(5) if c not in sampled)
    touch(f"{run_dir}/round_000/global.safetensors")
    touch(f"{run_dir}/round_000/participants.json")
    touch(f"{run_dir}/round_000/clients/client_{sampled[1]:03d}.safetensors")
    touch(f"{run_dir}/round_000/clients/client_{other:03d}.safetensors")
    touch(f"{run_dir}/round_001/metrics.json")

    # Execute
    rows = progress(cfg)

    # Assert
    assert [r.round for r in rows] == [0, 1, 2]
    first, second = rows[0], rows[1]
    assert (first.has_global, first.has_metrics, first.has_participants_file) == (True, False, True)
    assert first.participants == sampled
    assert first.clients_done == sorted([sampled[1], other])
    assert first.clients_missing == [sampled[0]]
    assert (second.has_global, second.has_metrics, second.has_participants_file) == (False, True, False)
    assert second.participants == participants(5, 2, 3, 1)
    assert second.clients_missing == second.participants
    assert [r.round for r in progress(cfg, rnd=1)] == [1]
    assert [r.round for r in progress(cfg, rounds=4)] == [0, 1, 2, 3, 4]


def test_progress_command_prints_lines_and_json(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "federation": {"num_clients": 2, "rounds": 1}}))
    (tmp_path / "run" / "round_000" / "clients").mkdir(parents=True)
    (tmp_path / "run" / "round_000" / "global.safetensors").write_bytes(b"")
    (tmp_path / "run" / "round_000" / "clients" / "client_001.safetensors").write_bytes(b"")

    lines = CliRunner().invoke(app, ["progress", "--config", str(config)])
    as_json = CliRunner().invoke(app, ["progress", "--config", str(config), "--round", "0", "--json"])

    assert lines.exit_code == 0, lines.output
    assert lines.stdout.splitlines() == [
        "round=0 global=1 metrics=0 participants_file=0 participants=0,1 clients_done=1 clients_missing=0",
        "round=1 global=0 metrics=0 participants_file=0 participants=0,1 clients_done= clients_missing=0,1",
    ]
    assert json.loads(as_json.stdout) == {"run_dir": str(tmp_path / "run"), "rounds": [{
        "round": 0, "global": True, "metrics": False, "participants_file": False, "participants": [0, 1],
        "clients_done": [1], "clients_missing": [0]}]}


def test_progress_lines_carry_flat_secagg_fields_for_a_shell(tmp_path):
    # Prepare: round 0 of a secure-aggregation run with every key, two shares, a survivor list and one answer
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "federation": {"num_clients": 3, "rounds": 1},
                                      "secure_aggregation": {"enabled": True}}))
    secagg = tmp_path / "run" / "round_000" / "secagg"
    for step, clients in {"keys": [0, 1, 2], "shares": [0, 2], "unmask": [2]}.items():
        (secagg / step).mkdir(parents=True)
        for c in clients:
            (secagg / step / f"client_{c:03d}.json").write_bytes(b"{}")
    (secagg / "survivors.json").write_text(json.dumps({"survivors": [0, 2], "dropped": [1]}))

    # Execute
    lines = CliRunner().invoke(app, ["progress", "--config", str(config)])
    plain = CliRunner().invoke(app, ["progress", "--config", str(config), "--set", "secure_aggregation.enabled=false"])

    # Assert: space-free fields, survivors '-' while not listed; none of them without secure aggregation
    assert lines.exit_code == 0, lines.output
    assert lines.stdout.splitlines() == [
        "round=0 global=0 metrics=0 participants_file=0 participants=0,1,2 clients_done= clients_missing=0,1,2 "
        "secagg=1 secagg_keys=0,1,2 secagg_shares=0,2 secagg_unmask=2 secagg_survivors=0,2",
        "round=1 global=0 metrics=0 participants_file=0 participants=0,1,2 clients_done= clients_missing=0,1,2 "
        "secagg=1 secagg_keys= secagg_shares= secagg_unmask= secagg_survivors=-",
    ]
    assert plain.exit_code == 0, plain.output
    assert "secagg" not in plain.stdout
