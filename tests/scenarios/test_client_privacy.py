"""Privacy held by the client, end to end on the tiny BERT: composition across a batch-size change,
the client's policy and its own ledger, what the run publishes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from supermask_cli import steps
from supermask_cli.checkpoint import read_meta
from supermask_cli.config import load_config
from supermask_cli.layout import Layout
from supermask_cli.report import load_history, table_rows


def _opacus(history: list[tuple[float, float, int]], delta: float = 1e-5) -> float:
    acc = RDPAccountant()
    acc.history = history  # one (noise multiplier, sample rate, steps) entry per segment
    return acc.get_epsilon(delta=delta)


def _two_rounds(path: Path, batches: tuple[int, int]) -> tuple[object, Layout]:
    """Round 0 at the first batch size, round 1 at the second (``train.batch_size`` is a local
    choice, outside the config digest), every client both rounds, then the final global's eval."""
    cfg = load_config(path, [f"train.batch_size={batches[0]}"])
    steps.init(cfg)
    for rnd, batch in enumerate(batches):
        cfg = load_config(path, [f"train.batch_size={batch}"])
        for client in range(3):
            steps.train_client(cfg, client, rnd=rnd)
        steps.aggregate(cfg, rnd=rnd)
    for rnd in range(3):
        steps.evaluate(cfg, rnd=rnd)
    return cfg, Layout(cfg.run_dir)


def test_batch_32_then_4_composes_both_segments_everywhere(tiny_config):
    # 3 clients of 32 examples, 4 steps a round: q = 1 in round 0, q = 0.125 in round 1
    path = tiny_config("threshold", privacy={"mode": "example", "noise_multiplier": 1.0, "max_grad_norm": 1.0})
    cfg, layout = _two_rounds(path, (32, 4))
    expected = _opacus([(1.0, 1.0, 4), (1.0, 0.125, 4)])  # ≈ 10.962; the latest (σ, q) for all 8 steps gives 3.793
    assert round(expected, 3) == 10.962
    for client in range(3):
        first = read_meta(layout.client_path(0, client)).privacy
        assert first.epsilon == pytest.approx(_opacus([(1.0, 1.0, 4)]), rel=1e-12)
        ledger = read_meta(layout.client_path(1, client)).privacy
        assert ledger.epsilon == pytest.approx(expected, rel=1e-12)
        assert ledger.round_epsilon == pytest.approx(_opacus([(1.0, 0.125, 4)]), rel=1e-12)
        assert [(r.round, r.sample_rate, r.steps) for r in ledger.history] == [(0, 1.0, 4), (1, 0.125, 4)]
    final = read_meta(layout.global_path(2)).privacy
    assert final.epsilon == pytest.approx(expected, rel=1e-12)
    assert json.loads(Path(layout.metrics_path(2)).read_text())["epsilon"] == pytest.approx(expected, rel=1e-12)
    assert steps.inspect(layout.client_path(1, 0))["privacy"]["epsilon"] == pytest.approx(expected, rel=1e-12)
    assert table_rows(load_history(cfg.run_dir))[-1]["epsilon"] == pytest.approx(expected, rel=1e-12)


def test_target_epsilon_holds_over_the_real_schedule_after_a_batch_size_change(tiny_config):
    path = tiny_config("scaling", privacy={"mode": "example", "target_epsilon": 3.0, "max_grad_norm": 1.0})
    cfg, layout = _two_rounds(path, (32, 4))
    for client in range(3):
        first, second = (read_meta(layout.client_path(r, client)).privacy for r in range(2))
        # recomputed from the σ and q each round really used: within the target (the old plan ended at 3.118)
        true = _opacus([(first.noise_multiplier, 1.0, 4), (second.noise_multiplier, 0.125, 4)])
        assert true <= 3.0
        assert second.epsilon == pytest.approx(true, rel=1e-12)
    assert read_meta(layout.global_path(2)).privacy.epsilon <= 3.0
