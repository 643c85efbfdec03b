"""Crash safety: SIGKILL `train-client` and `aggregate` at random points, then check that no partial
file exists under a final name, that only `.tmp-*.part` files are left behind (and ignored), and
that a re-run gives a file byte-identical to an uninterrupted run and removes those temp files."""

from __future__ import annotations

import importlib.util
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_config_dict
from supermask_cli import checkpoint, storage
from supermask_cli import steps
from supermask_cli.cli import app
from supermask_cli.layout import Layout

TRIALS = 4
TEMP = re.compile(r"^\.tmp-.*\.part$")
# One thread per process: the two campaigns below run side by side on small machines.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

if importlib.util.find_spec("supermask_cli.__main__") is not None:
    CLI = [sys.executable, "-m", "supermask_cli"]
else:  # pragma: no cover - the console script
    CLI = [shutil.which("supermask") or "supermask"]


class Run:
    def __init__(self, root: Path, tiny_model, tiny_data) -> None:
        self.root = root
        self.config = root / "threshold.yaml"
        self.config.write_text(yaml.safe_dump(tiny_config_dict(root / "run", tiny_model, tiny_data, "threshold")))
        runner = CliRunner()
        for args in (["init"], ["train-client", "--client", "0"], ["train-client", "--client", "1"]):
            result = runner.invoke(app, [*args, "-c", str(self.config)])
            assert result.exit_code == 0, result.output
        self.layout = Layout(str(root / "run"))
        self.gl = steps.load_global(self.layout.global_path(0))

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [*CLI, *args, "-c", str(self.config)], cwd=self.root, env=ENV, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True,
        )

    def complete(self, *args: str) -> float:
        start = time.perf_counter()
        proc = self.start(*args)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        return time.perf_counter() - start


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model, tiny_data) -> Run:
    return Run(tmp_path_factory.mktemp("crash"), tiny_model, tiny_data)


def check_directory(directory: str, final: str, reference: bytes, gl, others: set[str]) -> None:
    """``final`` is absent or complete; every other new name in the directory is a temp file."""
    if os.path.exists(final):
        data = Path(final).read_bytes()
        checkpoint.loads(data, final, reference=gl)
        assert data == reference, f"{final} differs from the uninterrupted run's file"
    for name in set(os.listdir(directory)) - others - {os.path.basename(final)}:
        assert TEMP.match(name), f"unexpected file {name!r} in {directory}"


def kill_trials(
    run: Run, args: list[str], final: str, reference: bytes, runtime: float, seed: int, others: set[str] = frozenset()
) -> int:
    """SIGKILL the command at a random point of each of TRIALS slices of its runtime; returns how many were killed."""
    rng = random.Random(seed)
    killed = 0
    for trial in range(TRIALS):
        start = time.perf_counter()
        proc = run.start(*args)
        try:
            proc.wait(timeout=rng.uniform(trial, trial + 1) / TRIALS * runtime)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        if proc.returncode == 0:  # finished first: its time is a better estimate of the runtime
            runtime = min(runtime, time.perf_counter() - start)
        else:
            assert proc.returncode == -signal.SIGKILL, err.decode()
            killed += 1
        if os.path.isdir(os.path.dirname(final)):
            check_directory(os.path.dirname(final), final, reference, run.gl, others)
        if os.path.exists(final):  # start the next trial from scratch
            os.remove(final)
    return killed


def crash_before_rename(run: Run, args: list[str]) -> None:
    """Run the command in a process that SIGKILLs itself where write_atomic renames its temp file."""
    code = (
        "import os, signal, sys\n"
        "os.replace = os.link = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        "from supermask_cli.cli import app\n"
        f"sys.argv = ['supermask', *{[*args, '-c', str(run.config)]!r}]\n"
        "app()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=run.root, env=ENV, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()


def temps(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if TEMP.match(n)) if os.path.isdir(directory) else []


def reference_and_crash(run: Run, args: list[str], final: str) -> tuple[bytes, float]:
    """An uninterrupted run (to a side path) and, concurrently, a run killed just before its rename."""
    ref_path = run.root / "reference" / f"{args[0]}.safetensors"
    start = time.perf_counter()
    proc = run.start(*args, "--out", str(ref_path))
    crash_before_rename(run, args)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    runtime = time.perf_counter() - start
    assert not os.path.exists(final)
    left = temps(os.path.dirname(final))
    assert len(left) == 1, "a crash between write and rename leaves one temp file"
    reference = ref_path.read_bytes()
    assert Path(os.path.dirname(final), left[0]).read_bytes() == reference, "the temp file was complete"
    return reference, runtime


def train_client_campaign(run: Run) -> None:
    args = ["train-client", "--client", "2", "--round", "0"]
    final = run.layout.client_path(0, 2)
    reference, runtime = reference_and_crash(run, args, final)
    # The temp file holds a complete upload, but the layout never lists it as a client file.
    assert [os.path.basename(p) for p in run.layout.client_files(0)] == ["client_000.safetensors", "client_001.safetensors"]

    others = {"client_000.safetensors", "client_001.safetensors"}
    assert kill_trials(run, args, final, reference, runtime, seed=1, others=others) >= 1

    run.complete(*args)
    assert Path(final).read_bytes() == reference
    assert temps(os.path.dirname(final)) == [], "the re-run removes what killed writers left"
    assert [os.path.basename(p) for p in run.layout.client_files(0)] == [f"client_{i:03d}.safetensors" for i in range(3)]


def aggregate_campaign(run: Run) -> None:
    args = ["aggregate", "--clients", run.layout.client_path(0, 0), "--clients", run.layout.client_path(0, 1)]
    final = run.layout.global_path(1)
    reference, runtime = reference_and_crash(run, args, final)
    assert run.layout.rounds() == [0], "a round with only a temp file is not a round"

    # participants.json of round 1 is written (atomically) after the global by a completed trial
    assert kill_trials(run, args, final, reference, runtime, seed=2, others={"participants.json"}) >= 1

    run.complete(*args)
    assert Path(final).read_bytes() == reference
    assert temps(os.path.dirname(final)) == [], "the re-run removes what killed writers left"
    assert run.layout.rounds() == [0, 1]
    checkpoint.load_checkpoint(final)


@pytest.fixture(scope="module")
def campaigns(run):
    """Both campaigns touch disjoint files, so they run side by side (one core each)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {"train-client": pool.submit(train_client_campaign, run), "aggregate": pool.submit(aggregate_campaign, run)}


def test_stale_temps_of_dead_writers_on_this_host_are_removed(tmp_path):
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    names = {
        "dead": f".tmp-{host}-{int(dead.stdout)}-abc123.part",
        "live": f".tmp-{host}-{os.getpid()}-def456.part",
        "other_host": f".tmp-{host}x-{int(dead.stdout)}-ghi789.part",
        "unrelated": "notes.part",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    storage.write_atomic(str(tmp_path / "global.safetensors"), b"data")
    assert sorted(os.listdir(tmp_path)) == sorted(
        [names["live"], names["other_host"], names["unrelated"], "global.safetensors"]
    )


def test_train_client_survives_sigkill(campaigns):
    campaigns["train-client"].result(timeout=300)


def test_aggregate_survives_sigkill(campaigns):
    campaigns["aggregate"].result(timeout=300)
