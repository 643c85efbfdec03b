"""Sparse vs entropy-coded (ANS) client masks: size against the cross-entropy bound, and decode time.

Two synthetic MiniLM-sized globals (the 37 target shapes of all-MiniLM-L6-v2, 10.76 M weights):
``uniform`` (every prob 0.99, the round-0 global; the mask sampled from it) and ``later`` (a
later-round global: most probs at 1 - 1e-3, a fraction spread over (0.01, 0.99); the client
mask sampled from probs shifted by logit noise). Prints one JSON object; sizes in bits per weight.

    python benchmarks/mask_coding.py [--spread 0.1] [--shift 0.5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from supermask_cli import coding

HIDDEN, INTERMEDIATE, LAYERS = 384, 1536, 6
SHAPES = [(HIDDEN, HIDDEN)] * (4 * LAYERS + 1) + [(INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)] * LAYERS


def scenario(name: str, spread: float, shift: float, gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(global probs, client mask) per module."""
    out = []
    for shape in SHAPES:
        if name == "uniform":
            probs = torch.full(shape, 0.99)
            client = probs
        else:
            probs = torch.full(shape, 1 - 1e-3)
            spread_out = torch.rand(shape, generator=gen) < spread
            probs[spread_out] = 0.01 + 0.98 * torch.rand(int(spread_out.sum()), generator=gen)
            noise = shift * torch.randn(shape, generator=gen, dtype=torch.float64)
            client = torch.sigmoid(torch.logit(probs.double()) + noise)
        out.append((probs, torch.rand(shape, generator=gen, dtype=torch.float64) < client))
    return out


def best_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(modules: list[tuple[torch.Tensor, torch.Tensor]], repeats: int) -> dict[str, float]:
    weights = sum(p.numel() for p, _ in modules)
    start = time.perf_counter()
    plans = [coding.sparse_plan(p) for p, _ in modules]
    plan_s = time.perf_counter() - start
    sparse = [coding.encode_sparse(m, plan) for (_, m), plan in zip(modules, plans)]
    coded = [coding.encode_mask(m, p) for p, m in modules]
    for (p, m), plan, s, c in zip(modules, plans, sparse, coded):
        assert torch.equal(coding.decode_sparse(s, plan), m) and torch.equal(coding.decode_mask(c, p), m)
    return {
        "bound_bits_per_weight": sum(coding.ideal_bits(m, p) for p, m in modules) / weights,
        "entropy_bits_per_weight": sum(coding.entropy_bits(p) for p, _ in modules) / weights,
        "sparse_bits_per_weight": 8 * sum(map(len, sparse)) / weights,
        "coded_bits_per_weight": 8 * sum(map(len, coded)) / weights,
        "sparse_plan_s": plan_s,
        "sparse_decode_s": best_seconds(lambda: [coding.decode_sparse(s, pl) for s, pl in zip(sparse, plans)], repeats),
        "coded_decode_s": best_seconds(lambda: [coding.decode_mask(c, p) for c, (p, _) in zip(coded, modules)], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spread", type=float, default=0.1, help="later: fraction of probs in (0.01, 0.99)")
    parser.add_argument("--shift", type=float, default=0.5, help="later: std of the client's logit shift")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    result = {"weights": sum(a * b for a, b in SHAPES), "modules": len(SHAPES), **vars(args)}
    for name in ("uniform", "later"):
        result[name] = measure(scenario(name, args.spread, args.shift, generator), args.repeats)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
