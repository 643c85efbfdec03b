"""The reducer's secure-aggregation path: survivors' sums -> the next global, with client-level
DP's noise (here zero) after unmasking, divided by the planned number of clients."""

from __future__ import annotations

import math

import pytest
import torch

from supermask_cli.config import Config
from supermask_cli.reducer import next_global_masked
from supermask_cli.secagg import packing, upload

SHAPES = {"mask/m": (4,), "head/h": (1,)}


def _run(privacy: dict) -> dict[str, torch.Tensor]:
    cfg = Config.model_validate({"federation": {"num_clients": 3}, "mask": {"kind": "threshold"}, "privacy": privacy,
                                 "secure_aggregation": {"enabled": True}})
    previous = {"mask/m": torch.tensor([True, False, True, False]), "head/h": torch.zeros(1)}
    survivors = [{"mask/m": torch.tensor([True, True, False, False]), "head/h": torch.tensor([0.03])},
                 {"mask/m": torch.tensor([True, False, False, False]), "head/h": torch.tensor([0.0])}]
    bits = upload.segment_bits(list(SHAPES), 3)
    streams = [{f"masked/{k}": torch.from_numpy(packing.pack(v, bits[k])) for k, v in upload.encode(t, 1, bits).items()}
               for t in survivors]
    return next_global_masked(lambda i: streams[i], 2, previous, "threshold", cfg, bits=bits, total_weight=2, shapes=SHAPES,
                              unmask=lambda total: total, rule="mean", rnd=0)


def test_plain_mean_of_the_survivors():
    out = _run({"mode": "none"})
    assert out["mask/m"].tolist() == [True, True, False, False]  # a 1-1 tie keeps the weight
    assert math.isclose(float(out["head/h"]), 0.015, abs_tol=1e-7)


def test_client_level_sums_over_the_planned_clients():
    out = _run({"mode": "client", "noise_multiplier": 0.0, "max_flips": 8})
    # ref + Σ(m - ref) / 3 planned clients: weight 1 gets 1/3 of a vote, weight 2 loses 2/3
    assert out["mask/m"].tolist() == [True, False, False, False]
    assert math.isclose(float(out["head/h"]), 0.01, abs_tol=1e-7)
