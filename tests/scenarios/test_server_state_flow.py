"""Server optimizer and ``bayes`` state through the real steps: each aggregate reads the state the
previous one wrote into the global file (what separate processes on separate machines see)."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import tiny_config_dict

from supermask_cli import checkpoint, steps
from conftest import aggregate_stacked
from supermask_cli.config import load_config
from supermask_cli.server_opt import ServerOptimizer


def _round(cfg, rnd: int) -> tuple[checkpoint.Checkpoint, list[checkpoint.Checkpoint]]:
    """Train every client of round ``rnd``, aggregate; returns (the round's global, its clients)."""
    layout_dir = cfg.run_dir
    gl = checkpoint.load_checkpoint(f"{layout_dir}/round_{rnd:03d}/global.safetensors")
    for client in range(cfg.federation.num_clients):
        steps.train_client(cfg, client, rnd=rnd)
    clients = [
        checkpoint.load_checkpoint(f"{layout_dir}/round_{rnd:03d}/clients/client_{c:03d}.safetensors", reference=gl)
        for c in range(cfg.federation.num_clients)
    ]
    steps.aggregate(cfg, rnd=rnd)
    return gl, clients


@pytest.mark.parametrize(
    "federation,groups",
    [
        ({"server_optimizer": "adam", "server_lr": 0.3, "server_betas": [0.5, 0.9]}, ["opt_m", "opt_v"]),
        ({"aggregator": "bayes", "bayes_reset": 2, "server_optimizer": "momentum"}, ["opt_m", "beta_a", "beta_b"]),
    ],
)
def test_two_rounds_carry_server_state_in_the_global(tmp_path, tiny_model, tiny_data, federation, groups):
    # Prepare
    raw = tiny_config_dict(tmp_path / "run", tiny_model, tiny_data, "bernoulli")
    raw["federation"].update(federation)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    _, cfg = steps.init(load_config(tmp_path / "cfg.yaml"))
    fed = cfg.federation
    server = ServerOptimizer(fed.server_optimizer, fed.server_lr, *fed.server_betas, fed.server_tau)
    # Execute
    gl0, clients0 = _round(cfg, 0)
    gl1, clients1 = _round(cfg, 1)
    gl2 = checkpoint.load_checkpoint(f"{cfg.run_dir}/round_002/global.safetensors")
    # Assert: round 0 starts from zero state (and a fresh prior), round 1 continues from round 1's file
    assert gl0.meta.server_state == []
    assert gl1.meta.server_state == gl2.meta.server_state == groups
    for gl, clients, reset in ((gl0, clients0, True), (gl1, clients1, False)):
        weights = [c.meta.num_examples for c in clients]
        expected = aggregate_stacked(
            [c.tensors for c in clients], weights, "bernoulli", fed.aggregator, previous=gl.tensors, server=server,
            bayes_reset=reset,
        )
        nxt = gl1 if gl is gl0 else gl2
        assert set(nxt.tensors) == set(expected)
        for key, value in expected.items():
            torch.testing.assert_close(nxt.tensors[key], value, rtol=1e-5, atol=1e-6, msg=key)
    moved = gl2.tensors["opt_m/" + next(k for k in gl2.tensors if k.startswith("probs/"))]
    assert moved.abs().sum() > 0
