"""scripts/federated_rounds.sh drives rounds with the four subcommands, clients in parallel."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "federated_rounds.sh"


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=os.environ.copy(), capture_output=True,
                          text=True, timeout=1200)


def test_rounds_with_parallel_clients_resume_then_no_op_and_same_bytes_as_run(tiny_config, tmp_path):
    # Prepare
    from supermask_cli import steps
    from supermask_cli.config import load_config

    config = tiny_config("bernoulli", federation={"num_clients": 3, "rounds": 2})
    run_dir = Path(yaml.safe_load(config.read_text())["run_dir"])

    # Execute: 1 round (stopping before the config's 2), 2 clients at a time
    result = run_script("--config", str(config), "--rounds", "1", "--jobs", "2", cwd=tmp_path)

    # Assert
    assert result.returncode == 0, result.stderr
    for rnd in range(2):
        assert (run_dir / f"round_{rnd:03d}" / "global.safetensors").is_file()
        assert json.loads((run_dir / f"round_{rnd:03d}" / "metrics.json").read_text())["round"] == rnd
    assert sorted(p.name for p in (run_dir / "round_000" / "clients").iterdir()) == [
        "client_000.safetensors", "client_001.safetensors", "client_002.safetensors"]
    assert not (run_dir / "round_002").exists()

    # Execute: continue to the config's 2 rounds, then once more
    rest = run_script("--config", str(config), "--jobs", "2", cwd=tmp_path)
    assert rest.returncode == 0, rest.stderr
    assert "round 0: training" not in rest.stderr and "round 1: training 3 client(s)" in rest.stderr
    before = {p: p.read_bytes() for p in run_dir.rglob("*.safetensors")}
    again = run_script("--config", str(config), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "training" not in again.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*.safetensors")} == before

    # Assert: the same bytes as `supermask run` of the same config in another run dir
    reference = tmp_path / "reference"
    steps.run(load_config(config, [f"run_dir={reference}"]))
    for rnd in (1, 2):
        name = f"round_{rnd:03d}/global.safetensors"
        assert hashlib.sha256((run_dir / name).read_bytes()).digest() == hashlib.sha256((reference / name).read_bytes()).digest()


def test_missing_config_argument_exits_2(tmp_path):
    result = run_script("--jobs", "2", cwd=tmp_path)
    assert result.returncode == 2
    assert "--config is required" in result.stderr


def test_gpus_sampled_clients_and_a_url_run_dir(tiny_config, tmp_path):
    # Prepare: 3 of 5 clients per round, a file:// run dir, and a `supermask` on PATH that logs
    # each command with its CUDA_VISIBLE_DEVICES before and after running the real one
    from supermask_cli.sampling import participants

    run_dir = tmp_path / "url_run"
    config = tiny_config("threshold", run_dir=f"file://{run_dir}",
                         federation={"num_clients": 5, "clients_per_round": 3, "rounds": 1})
    log, bin_dir = tmp_path / "calls.log", tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "supermask"
    wrapper.write_text(f'#!/bin/bash\necho "start ${{CUDA_VISIBLE_DEVICES-none}} $*" >> {log}\n'
                       f'{sys.executable} -m supermask_cli "$@"; rc=$?\n'
                       f'echo "end ${{CUDA_VISIBLE_DEVICES-none}} $*" >> {log}\nexit $rc\n')
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPT.parents[1]), env.get("PYTHONPATH")]))

    def script(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), "--config", str(config), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=1200)

    # Execute
    result = script("--gpus", "3,5")

    # Assert: only the round's participants trained, on GPUs 3, 5, 3 in turn, one client per GPU at a time
    assert result.returncode == 0, result.stderr
    sampled = participants(5, 3, 0, 0)
    assert sorted(p.name for p in (run_dir / "round_000" / "clients").iterdir()) == [
        f"client_{c:03d}.safetensors" for c in sampled]
    assert (run_dir / "round_001" / "metrics.json").is_file()
    calls = [line.split() for line in log.read_text().splitlines()]
    starts = {c[c.index("--client") + 1]: c[1] for c in calls if c[0] == "start" and c[2] == "train-client"}
    assert starts == {str(sampled[0]): "3", str(sampled[1]): "5", str(sampled[2]): "3"}
    for gpu in ("3", "5"):
        events = [c[0] for c in calls if c[2] == "train-client" and c[1] == gpu]
        assert events == ["start", "end"] * (len(events) // 2), events
    assert {c[1] for c in calls if c[2] != "train-client"} == {"none"}

    # Execute: a re-run of the finished run only asks for progress
    log.unlink()
    again = script("--gpus", "3,5")
    assert again.returncode == 0, again.stderr
    assert {line.split()[2] for line in log.read_text().splitlines()} == {"progress"}


def test_secure_aggregation_rounds_resume_and_match_run_byte_for_byte(tiny_config, tmp_path, monkeypatch):
    # Prepare: 4 clients, 2 rounds with secure aggregation; secrets under --secrets-root, outside run_dir
    from supermask_cli import steps
    from supermask_cli.config import load_config
    from supermask_cli.steps import secure

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # `supermask run` keeps its secrets under ~
    config = tiny_config("threshold", federation={"num_clients": 4, "rounds": 2},
                         secure_aggregation={"enabled": True, "threshold": 3})
    run_dir = Path(yaml.safe_load(config.read_text())["run_dir"])
    secrets = tmp_path / "secrets"
    common = ("--config", str(config), "--jobs", "2", "--secrets-root", str(secrets))

    # Execute: round 0's keys published (as if the script had been killed after that step) ...
    cfg = load_config(config)
    steps.init(cfg)
    for c in range(4):
        secure.publish_keys(cfg, c, 0, secrets=str(secrets / f"client-{c}"))
    # ... then the script, which continues from what is in
    result = run_script(*common, cwd=tmp_path)

    # Assert: every step of both rounds ran once per client, secrets only under --secrets-root
    assert result.returncode == 0, result.stderr
    assert "round 0: secagg keys" not in result.stderr and "round 0: secagg shares of 4 client(s)" in result.stderr
    assert "round 1: secagg keys of 4 client(s)" in result.stderr and "round 1: secagg unmask of 4 client(s)" in result.stderr
    for rnd in range(3):
        assert (run_dir / f"round_{rnd:03d}" / "metrics.json").is_file()
    assert sorted(p.name for p in secrets.iterdir()) == [f"client-{c}" for c in range(4)]
    assert not [p for p in run_dir.rglob("*") if "secret" in p.name or p.name.endswith(".key")]
    before = {p: p.read_bytes() for p in run_dir.rglob("*.safetensors")}
    again = run_script(*common, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "== round" not in again.stderr and {p: p.read_bytes() for p in run_dir.rglob("*.safetensors")} == before

    # Assert: the globals are `supermask run`'s: the same tensor bytes (the unmasked sum is exact) and
    # the same metadata but for the digests of the uploads, whose one-time masks are fresh randomness
    # (and so of the previous global, which lists them)
    reference = tmp_path / "reference"
    steps.run(load_config(config, [f"run_dir={reference}"]))
    for rnd in (1, 2):
        name = f"round_{rnd:03d}/global.safetensors"
        ours, theirs = (run_dir / name).read_bytes(), (reference / name).read_bytes()
        assert _without_upload_digests(ours) == _without_upload_digests(theirs), name


def _without_upload_digests(blob: bytes) -> tuple[dict, bytes]:
    """A safetensors file as (header without the upload and parent digests, tensor bytes)."""
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + size])
    meta = json.loads(header["__metadata__"]["supermask"])
    for client in meta["aggregation"]["clients"]:
        assert len(client.pop("digest")) == 64
    assert len(meta.pop("parent_digest")) == 64
    header["__metadata__"]["supermask"] = meta
    return header, blob[8 + size:]


def test_secrets_root_without_secure_aggregation_exits_2(tiny_config, tmp_path):
    config = tiny_config("threshold", federation={"rounds": 1})
    result = run_script("--config", str(config), "--secrets-root", str(tmp_path / "s"), cwd=tmp_path)
    assert result.returncode == 2 and "--secrets-root: the config has no secure aggregation" in result.stderr
