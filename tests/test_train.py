"""Learning-rate schedules and batch order of the local training loop."""

import torch

from supermask_cli.train import batch_order, linear_schedule


def test_linear_schedule_warms_up_then_decays_to_zero():
    factor = linear_schedule(total=6, warmup=2)
    assert [factor(s) for s in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]


def test_constant_schedule_warms_up_then_holds():
    factor = linear_schedule(total=6, warmup=2, decay=False)
    assert [factor(s) for s in range(6)] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]


def test_batch_order_reshuffles_each_pass_and_keeps_the_partial_batch():
    batches = batch_order(5, 2, 4, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [2, 2, 1, 2]
    assert sorted(int(i) for b in batches[:3] for i in b) == [0, 1, 2, 3, 4]
