"""Privacy end to end on the tiny BERT: the ledger each file records against an independent
accountant computation (also across processes), the zero-noise run against the plain run, a
target ε over a whole run, and client-level DP's bounds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from opacus.accountants import RDPAccountant
from safetensors import safe_open

from supermask_cli import steps
from supermask_cli.checkpoint import ClientPrivacy, RunPrivacy, load_checkpoint, read_meta
from supermask_cli.config import load_config
from supermask_cli.layout import Layout
from supermask_cli.report import load_history, plot, table_rows

REPO = Path(__file__).resolve().parents[2]


def _eps(sigma: float, rate: float, n_steps: int, delta: float) -> float:
    acc = RDPAccountant()
    acc.history = [(sigma, rate, n_steps)]
    return acc.get_epsilon(delta=delta)


def _in_new_process(config: Path, code: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    script = f"from supermask_cli import steps\nfrom supermask_cli.config import load_config\ncfg = load_config({str(config)!r})\n{code}"
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def test_example_ledger_equals_the_accountant_after_resuming_in_new_processes(tiny_config):
    # 3 clients of 32 examples, batch 8: q = 0.25, 4 steps per round
    path = tiny_config("threshold", privacy={"mode": "example", "noise_multiplier": 1.3, "max_grad_norm": 0.5})
    _in_new_process(path, "steps.init(cfg)\nfor c in range(3): steps.train_client(cfg, c, rnd=0)\nsteps.aggregate(cfg, rnd=0)")
    _in_new_process(path, "steps.run(cfg)")  # resumes at round 1
    cfg = load_config(path)
    layout = Layout(cfg.run_dir)
    for rnd in range(2):
        for client in range(3):
            ledger = read_meta(layout.client_path(rnd, client)).privacy
            assert isinstance(ledger, ClientPrivacy)
            assert (ledger.mode, ledger.noise_multiplier, ledger.max_grad_norm, ledger.sample_rate) == ("example", 1.3, 0.5, 0.25)
            assert ledger.steps == 4 * (rnd + 1)  # cumulative over the client's rounds
            assert ledger.epsilon == pytest.approx(_eps(1.3, 0.25, ledger.steps, 1e-5), rel=1e-12)
            assert ledger.round_epsilon == pytest.approx(_eps(1.3, 0.25, 4, 1e-5), rel=1e-12)
            assert ledger.accountant == "rdp" and ledger.accountant_version.startswith("opacus ")
    final = read_meta(layout.global_path(2)).privacy
    assert isinstance(final, RunPrivacy)
    assert final.epsilon == pytest.approx(_eps(1.3, 0.25, 8, 1e-5), rel=1e-12)
    assert final.round_epsilon == pytest.approx(_eps(1.3, 0.25, 4, 1e-5), rel=1e-12)
    metrics = [json.loads(Path(layout.metrics_path(r)).read_text()) for r in range(3)]
    assert [m["epsilon"] for m in metrics] == [0.0, read_meta(layout.global_path(1)).privacy.epsilon, final.epsilon]


def _tensor_bytes(path: str) -> dict[str, bytes]:
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}


def test_zero_noise_without_clipping_reproduces_the_plain_run_byte_for_byte(tiny_config, tmp_path):
    fed = {"num_clients": 2, "rounds": 1}
    plain = load_config(tiny_config("bernoulli", federation=fed, run_dir=str(tmp_path / "plain")))
    private = load_config(tiny_config(
        "bernoulli", federation=fed, run_dir=str(tmp_path / "private"),
        privacy={"mode": "example", "noise_multiplier": 0.0, "max_grad_norm": None},
    ))
    steps.run(plain)
    steps.run(private)
    a, b = Layout(plain.run_dir), Layout(private.run_dir)
    files = [(a.client_path(0, c), b.client_path(0, c)) for c in range(2)] + [(a.global_path(1), b.global_path(1))]
    for x, y in files:
        assert _tensor_bytes(x) == _tensor_bytes(y)
    ledger = read_meta(b.client_path(0, 0)).privacy
    assert ledger.epsilon is None and ledger.noise_multiplier == 0.0  # no noise: no guarantee claimed
    assert read_meta(a.client_path(0, 0)).privacy is None


def test_target_epsilon_3_is_spent_by_the_end_of_the_run(tiny_config):
    path = tiny_config("scaling", federation={"num_clients": 2, "rounds": 2},
                       privacy={"mode": "example", "target_epsilon": 3.0, "max_grad_norm": 1.0})
    cfg = load_config(path)
    steps.run(cfg)
    layout = Layout(cfg.run_dir)
    run_eps = read_meta(layout.global_path(2)).privacy.epsilon
    assert 2.7 <= run_eps <= 3.0
    for client in range(2):
        ledger = read_meta(layout.client_path(1, client)).privacy
        assert 2.7 <= ledger.epsilon <= 3.0
        assert ledger.epsilon == pytest.approx(_eps(ledger.noise_multiplier, ledger.sample_rate, ledger.steps, 1e-5))
        first = read_meta(layout.client_path(0, client)).privacy
        assert first.noise_multiplier == ledger.noise_multiplier  # fixed up front for the whole run
        assert first.epsilon < ledger.epsilon


def test_client_level_bounds_uploads_and_records_the_run_epsilon(tiny_config):
    path = tiny_config("threshold", federation={"num_clients": 3, "rounds": 2},
                       privacy={"mode": "client", "noise_multiplier": 0.8, "max_flips": 16, "client_clip": 0.5},
                       train={"lr": 0.05})
    cfg = load_config(path)
    steps.run(cfg)
    layout = Layout(cfg.run_dir)
    for rnd in range(2):
        gl = load_checkpoint(layout.global_path(rnd))
        for client in range(3):
            ck = load_checkpoint(layout.client_path(rnd, client), reference=gl)
            flips = sum(int((ck.tensors[f"mask/{n}"] != gl.tensors[f"mask/{n}"]).sum()) for n in gl.meta.targets)
            assert flips <= 16
            ledger = ck.meta.privacy
            assert (ledger.mode, ledger.sample_rate, ledger.steps, ledger.max_flips) == ("client", 1.0, rnd + 1, 16)
            assert ledger.epsilon == pytest.approx(_eps(0.8, 1.0, rnd + 1, 1e-5), rel=1e-12)
        run = read_meta(layout.global_path(rnd + 1)).privacy
        assert run.epsilon == pytest.approx(_eps(0.8, 1.0, rnd + 1, 1e-5), rel=1e-12)
        assert run.round_epsilon == pytest.approx(_eps(0.8, 1.0, 1, 1e-5), rel=1e-12)
    # the noise moved the global: with σ = 0.8·√2·4 ≈ 4.5 on counts over 3 clients, many bits flip
    g0, g1 = (load_checkpoint(layout.global_path(r)) for r in (0, 1))
    assert any(not torch.equal(g0.tensors[f"mask/{n}"], g1.tensors[f"mask/{n}"]) for n in g0.meta.targets)
    assert steps.inspect(layout.client_path(1, 0))["privacy"] == read_meta(layout.client_path(1, 0)).privacy.model_dump()
    # report: ε per round in the table and on the picture
    history = load_history(cfg.run_dir)
    assert [row["epsilon"] for row in table_rows(history)] == [0.0] + [
        pytest.approx(_eps(0.8, 1.0, r, 1e-5)) for r in (1, 2)
    ]
    plot([history], str(Path(cfg.run_dir) / "report.png"))
    assert (Path(cfg.run_dir) / "report.png").read_bytes().startswith(b"\x89PNG")
