"""`supermask slurm`: job scripts (dry run, no Slurm needed) and whole chains on a real one-node Slurm.

The chain tests run when SUPERMASK_SLURM_TESTS=1 (`.ci/run` starts Slurm with scripts/dev/slurm-up.sh)
and then fail, never skip, when Slurm does not answer."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from supermask_cli.config import load_config
from supermask_cli.sampling import participants

from conftest import tiny_config_dict

REPO = Path(__file__).resolve().parents[2]
SLURM_TESTS = os.environ.get("SUPERMASK_SLURM_TESTS") == "1"
CHAIN_TIMEOUT_S = 900  # one whole chain on a loaded 2-core machine


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "supermask_cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def write_config(tmp_path: Path, name: str, model: Path, data: tuple[Path, Path], **federation) -> Path:
    raw = tiny_config_dict(tmp_path / name, model, data, kind="bernoulli")
    raw["federation"].update(federation)
    raw["train"]["device"] = "cpu"
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def jobs_of(run_dir: Path) -> dict[str, str]:
    """Name -> job id of the latest submission."""
    return {j["name"]: j["id"] for j in json.loads((run_dir / "slurm" / "jobs.json").read_text())["submissions"][-1]["jobs"]}


# --- dry run: the scripts and their sbatch flags, no Slurm needed ------------------------------------------

def dry_run(config: Path, *args: str) -> dict[str, dict]:
    result = cli("slurm", "--config", str(config), "--dry-run", *args, cwd=config.parent)
    assert result.returncode == 0, result.stderr
    jobs: dict[str, dict] = {}
    for block in result.stdout.strip().split("\n\n"):
        lines = block.splitlines()
        name = Path(lines[0].removeprefix("# ")).stem
        jobs[name] = {"script": "\n".join(lines[1:-1]), "sbatch": shlex.split(lines[-1].removeprefix("# "))}
    return jobs


def flag(job: dict, prefix: str) -> str | None:
    header = [w for line in job["script"].splitlines() if line.startswith("#SBATCH ") for w in shlex.split(line[8:])]
    found = [w for w in header + job["sbatch"] if w.startswith(prefix)]
    assert len(found) <= 1, found
    return found[0] if found else None


def test_dry_run_writes_the_chain_without_submitting(tiny_config, tmp_path):
    # Prepare: 3 clients, min_clients 1 (stragglers tolerated), train.device auto
    config = tiny_config("threshold", federation={"num_clients": 3, "rounds": 2})
    run_dir = tmp_path / "run_threshold"

    # Execute
    jobs = dry_run(config, "--array-parallelism", "2", "--set", "train.max_steps=3", "--sbatch-arg=--time=10")

    # Assert
    assert list(jobs) == ["init", "eval_000", "clients_000", "aggregate_000", "eval_001", "clients_001",
                          "aggregate_001", "eval_002"]
    expected_deps = {"init": None, "eval_000": "afterok:<init>", "clients_000": "afterok:<init>",
                     "aggregate_000": "afterany:<clients_000>", "eval_001": "afterok:<aggregate_000>",
                     "clients_001": "afterok:<aggregate_000>", "aggregate_001": "afterany:<clients_001>",
                     "eval_002": "afterok:<aggregate_001>"}
    for name, job in jobs.items():
        dep = flag(job, "--dependency=")
        assert (dep and dep.removeprefix("--dependency=")) == expected_deps[name], name
        assert flag(job, "--kill-on-invalid-dep=") == "--kill-on-invalid-dep=yes"
        assert flag(job, "--time=") == "--time=10"
        assert job["sbatch"][:2] == ["sbatch", "--parsable"]
        command = job["script"].splitlines()[-1]
        assert command.startswith(f"{sys.executable} -m supermask_cli ")
        assert f"--config {config.resolve()} --set train.max_steps=3" in command
        assert flag(job, "--gres=") == ("--gres=gpu:1" if name.startswith("clients") else None)
        assert flag(job, "--array=") == ("--array=0,1,2%2" if name.startswith("clients") else None)
        assert flag(job, "--output=").startswith(f"--output={run_dir / 'slurm' / 'logs'}/")
    assert jobs["clients_001"]["script"].endswith('--round 1 --client "$SLURM_ARRAY_TASK_ID"')
    assert jobs["aggregate_001"]["script"].endswith("aggregate --config " + str(config.resolve())
                                                    + " --set train.max_steps=3 --round 1")
    assert (run_dir / "slurm" / "clients_000.sh").is_file()
    assert not (run_dir / "slurm" / "jobs.json").exists()
    assert not (run_dir / "round_000").exists()


def test_dry_run_flags_follow_config_and_options(tiny_config):
    # afterok when every client is needed; no GPU for train.device=cpu; --gpus-per-client overrides
    config = tiny_config("threshold", federation={"num_clients": 3, "rounds": 1, "min_clients": 3})
    jobs = dry_run(config, "--set", "train.device=cpu")
    assert flag(jobs["aggregate_000"], "--dependency=") == "--dependency=afterok:<clients_000>"
    assert flag(jobs["clients_000"], "--gres=") is None
    assert flag(jobs["clients_000"], "--array=") == "--array=0,1,2"
    jobs = dry_run(config, "--gpus-per-client", "2", "--aggregate-wait", "30",
                   "--set", "federation.min_clients=2")
    assert flag(jobs["clients_000"], "--gres=") == "--gres=gpu:2"
    assert flag(jobs["aggregate_000"], "--dependency=") == "--dependency=afterany:<clients_000>"
    assert jobs["aggregate_000"]["script"].endswith("--round 0 --wait 30")


def test_dry_run_skips_steps_whose_outputs_exist_and_samples_clients(tiny_config, tmp_path):
    # Prepare: round 0 has its global, metrics and client 3's upload; 2 of 5 clients per round
    config = tiny_config("threshold", federation={"num_clients": 5, "clients_per_round": 2, "rounds": 2})
    round0 = tmp_path / "run_threshold" / "round_000"
    (round0 / "clients").mkdir(parents=True)
    for name in ("global.safetensors", "metrics.json"):
        (round0 / name).write_bytes(b"")
    sampled = [participants(5, 2, 0, r) for r in range(2)]
    assert sampled[0] != sampled[1]
    (round0 / "clients" / f"client_{sampled[0][0]:03d}.safetensors").write_bytes(b"")

    # Execute
    jobs = dry_run(config, "--array-parallelism", "1")

    # Assert: no init nor eval of round 0; round 0's array holds the one missing participant
    assert list(jobs) == ["clients_000", "aggregate_000", "eval_001", "clients_001", "aggregate_001", "eval_002"]
    assert flag(jobs["clients_000"], "--dependency=") is None
    assert flag(jobs["clients_000"], "--array=") == f"--array={sampled[0][1]}%1"
    assert flag(jobs["clients_001"], "--array=") == f"--array={sampled[1][0]},{sampled[1][1]}%1"


def test_dry_run_with_every_round_done_submits_nothing(tiny_config, tmp_path):
    config = tiny_config("threshold", federation={"num_clients": 2, "rounds": 1})
    for rnd in (0, 1):
        d = tmp_path / "run_threshold" / f"round_{rnd:03d}"
        d.mkdir(parents=True)
        (d / "global.safetensors").write_bytes(b"")
        (d / "metrics.json").write_bytes(b"")
    result = cli("slurm", "--config", str(config), "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "nothing to submit" in result.stdout

    (tmp_path / "run_threshold" / "round_001" / "metrics.json").unlink()
    jobs = dry_run(config)
    assert list(jobs) == ["eval_001"]
    assert flag(jobs["eval_001"], "--dependency=") is None


def test_slurm_dir_is_required_for_a_bucket_run_dir(tiny_config, tmp_path):
    config = tiny_config("threshold")
    result = cli("slurm", "--config", str(config), "--dry-run", "--set", "run_dir=memory://bucket/run", cwd=tmp_path)
    assert result.returncode == 2
    assert "--slurm-dir" in result.stderr


# --- real Slurm ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def slurm():
    if not SLURM_TESTS:
        pytest.skip("set SUPERMASK_SLURM_TESTS=1 with a running Slurm (sudo scripts/dev/slurm-up.sh)")
    try:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"SUPERMASK_SLURM_TESTS=1 but Slurm does not answer: {exc}")
    if state.returncode != 0 or not {"idle", "mix", "alloc"} & set(state.stdout.split()):
        pytest.fail(f"SUPERMASK_SLURM_TESTS=1 but no Slurm node is up: {state.stdout} {state.stderr}")


def wait_for_jobs(ids: list[str], run_dir: Path, timeout: float = CHAIN_TIMEOUT_S) -> None:
    """Until Slurm no longer lists any of ``ids`` as pending or running (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-o", "%i %t %r", "-j", ",".join(ids)], capture_output=True, text=True,
                                timeout=30)
        if queued.returncode == 0 and not queued.stdout.strip():
            return
        time.sleep(1)
    logs = "\n".join(f"{p.name}: {p.read_text()[-500:]}" for p in sorted((run_dir / "slurm" / "logs").glob("*")))
    subprocess.run(["scancel", *ids], timeout=30)
    pytest.fail(f"jobs still queued after {timeout} s: {queued.stdout}\n{logs}")


def submit(config: Path, *args: str) -> dict[str, str]:
    result = cli("slurm", "--config", str(config), *args, cwd=config.parent)
    assert result.returncode == 0, result.stderr + result.stdout
    return jobs_of(Path(load_config(config).run_dir))


def reference_run(config: Path, run_dir: Path) -> Path:
    """`supermask run` of the same config in another run dir."""
    result = cli("run", "--config", str(config), "--set", f"run_dir={run_dir}", cwd=config.parent)
    assert result.returncode == 0, result.stderr
    return run_dir


def held_chain_with_client_cancelled(config: Path, client: int) -> tuple[dict[str, str], Path]:
    """Submit a held chain, cancel round 0's ``client`` task before anything runs, release the rest."""
    run_dir = Path(load_config(config).run_dir)
    jobs = submit(config, "--sbatch-arg=--hold")
    twice = cli("slurm", "--config", str(config), cwd=config.parent)
    assert twice.returncode == 2 and "still queued" in twice.stderr, twice.stderr
    subprocess.run(["scancel", f"{jobs['clients_000']}_{client}"], check=True, timeout=30)
    subprocess.run(["scontrol", "release", *jobs.values()], check=True, capture_output=True, timeout=30)
    wait_for_jobs(list(jobs.values()), run_dir)
    return jobs, run_dir


def uploads(run_dir: Path, rnd: int) -> list[str]:
    folder = run_dir / f"round_{rnd:03d}" / "clients"
    return sorted(p.name for p in folder.glob("client_*.safetensors")) if folder.is_dir() else []


def aggregated_clients(path: Path) -> list[int]:
    from supermask_cli import checkpoint

    return sorted(c.client for c in checkpoint.read_meta(str(path)).aggregation.clients)


def test_chain_matches_run_byte_for_byte(slurm, tiny_model, tiny_data, tmp_path):
    # Prepare
    config = write_config(tmp_path, "slurm_run", tiny_model, tiny_data, num_clients=3, rounds=2)
    run_dir = tmp_path / "slurm_run"

    # Execute
    jobs = submit(config, "--array-parallelism", "2")
    wait_for_jobs(list(jobs.values()), run_dir)
    reference = reference_run(config, tmp_path / "reference")

    # Assert
    assert list(jobs) == ["init", "eval_000", "clients_000", "aggregate_000", "eval_001", "clients_001",
                          "aggregate_001", "eval_002"]
    for rnd in (1, 2):
        name = f"round_{rnd:03d}/global.safetensors"
        assert sha256(run_dir / name) == sha256(reference / name), name
        assert json.loads((run_dir / f"round_{rnd:03d}" / "metrics.json").read_text())["round"] == rnd
    assert len(list((run_dir / "slurm" / "logs").glob("*clients_000-*_*.out"))) == 3
    again = cli("slurm", "--config", str(config), cwd=tmp_path)
    assert again.returncode == 0 and "nothing to submit" in again.stdout


def test_cancelled_client_stops_an_afterok_chain_and_resubmitting_completes_it(slurm, tiny_model, tiny_data, tmp_path):
    # Prepare: every client is needed (min_clients = 3)
    config = write_config(tmp_path, "strict", tiny_model, tiny_data, num_clients=3, rounds=2, min_clients=3)

    # Execute
    first, run_dir = held_chain_with_client_cancelled(config, client=1)

    # Assert: round 0 trained clients 0 and 2, then the chain stopped
    assert uploads(run_dir, 0) == ["client_000.safetensors", "client_002.safetensors"]
    assert not (run_dir / "round_001").exists()
    assert (run_dir / "round_000" / "metrics.json").is_file()

    # Execute: submit again
    second = submit(config)
    wait_for_jobs(list(second.values()), run_dir)

    # Assert: only the missing work ran, and the run is complete
    assert list(second) == ["clients_000", "aggregate_000", "eval_001", "clients_001", "aggregate_001", "eval_002"]
    assert aggregated_clients(run_dir / "round_001" / "global.safetensors") == [0, 1, 2]
    assert (run_dir / "round_002" / "global.safetensors").is_file()
    assert (run_dir / "round_002" / "metrics.json").is_file()
    assert len(json.loads((run_dir / "slurm" / "jobs.json").read_text())["submissions"]) == 2


def test_cancelled_client_does_not_stop_an_afterany_chain(slurm, tiny_model, tiny_data, tmp_path):
    # Prepare: two of three clients suffice
    config = write_config(tmp_path, "tolerant", tiny_model, tiny_data, num_clients=3, rounds=2, min_clients=2)

    # Execute
    _, run_dir = held_chain_with_client_cancelled(config, client=1)

    # Assert: round 0 aggregated without client 1; round 1 had everyone; the chain finished
    assert uploads(run_dir, 0) == ["client_000.safetensors", "client_002.safetensors"]
    assert aggregated_clients(run_dir / "round_001" / "global.safetensors") == [0, 2]
    assert aggregated_clients(run_dir / "round_002" / "global.safetensors") == [0, 1, 2]
    assert (run_dir / "round_002" / "metrics.json").is_file()


def test_sampled_clients_match_run(slurm, tiny_model, tiny_data, tmp_path):
    # Prepare: 2 of 5 clients per round
    config = write_config(tmp_path, "sampled", tiny_model, tiny_data, num_clients=5, clients_per_round=2, rounds=2)
    run_dir = tmp_path / "sampled"

    # Execute
    jobs = submit(config)
    wait_for_jobs(list(jobs.values()), run_dir)
    reference = reference_run(config, tmp_path / "reference")

    # Assert
    for rnd in (0, 1):
        name = f"round_{rnd:03d}/participants.json"
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes()
        clients = json.loads((run_dir / name).read_text())["clients"]
        assert clients == participants(5, 2, 0, rnd)
        assert uploads(run_dir, rnd) == [f"client_{c:03d}.safetensors" for c in clients]
        assert uploads(reference, rnd) == uploads(run_dir, rnd)
    assert sha256(run_dir / "round_002" / "global.safetensors") == sha256(reference / "round_002" / "global.safetensors")
