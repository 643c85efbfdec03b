"""Upload tensors through secure aggregation against the plaintext reducer: masks bit-identical,
floats within the fixed point's half step."""

from __future__ import annotations

import pytest
import torch

from supermask_cli.rules import RunningMean, example_weights
from supermask_cli.errors import SecureAggregationError
from supermask_cli.secagg import encoding, simulate, upload
from supermask_cli.secagg.agreement import Context

SHAPES = {"mask/enc.q": (37, 5), "mask/enc.k": (3, 37), "head/classifier.weight": (2, 37), "scale/enc.v": (37,)}


def _clients(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        out.append({key: (torch.rand(shape, generator=g) < 0.7) if key.startswith("mask/") else torch.randn(shape, generator=g)
                    for key, shape in SHAPES.items()})
    return out


@pytest.mark.parametrize("weighting", ["uniform", "examples", "bounded"])
def test_secure_means_match_the_plaintext_running_mean(weighting):
    # Prepare: 6 clients, counts chosen so that bounded caps one of them
    clients, counts = _clients(6), [10, 12, 9, 100, 11, 10]
    weights = [upload.integer_weight(w, i) for i, w in enumerate(example_weights(counts, weighting).tolist())]
    plain = RunningMean()
    for tensors, w in zip(clients, weights):
        plain.add(tensors, float(w))
    # Execute: encode, mask, drop none, unmask, decode
    bits = upload.segment_bits(list(SHAPES), sum(weights))
    inputs = {i: upload.encode(t, w, bits) for i, (t, w) in enumerate(zip(clients, weights))}
    sums = simulate.run(Context("d", 0), inputs, bits, 4)
    secure = upload.decode_means(sums, bits, sum(weights), SHAPES)
    # Assert
    expected = plain.result()
    for key in SHAPES:
        if key.startswith("mask/"):
            assert torch.equal(secure[key], expected[key]), key  # bit for bit
            assert torch.equal(secure[key] >= 0.5, expected[key] >= 0.5)  # threshold's majority vote too
        else:
            rounding = 2 * torch.finfo(torch.float32).eps * float(expected[key].abs().max())  # both means are float32
            assert (secure[key].double() - expected[key].double()).abs().max() <= encoding.FIXED.resolution / 2 + rounding, key


def test_mask_segment_k_is_the_weights_sum():
    bits = upload.segment_bits(list(SHAPES), 10)
    assert bits["mask/enc.q"] == 4 and bits["head/classifier.weight"] == encoding.fixed_bits(10)


def test_non_integer_weights_and_unknown_tensors_refused():
    with pytest.raises(SecureAggregationError, match="client 3: weight 2.5 is not a positive integer"):
        upload.integer_weight(2.5, 3)
    with pytest.raises(SecureAggregationError, match="'opt_m/x' has no integer encoding"):
        upload.segment_bits(["opt_m/x"], 10)
    bits = upload.segment_bits(list(SHAPES), 10)
    with pytest.raises(SecureAggregationError, match="differ from the round's"):
        upload.encode({"mask/enc.q": torch.ones(37, 5, dtype=torch.bool)}, 1, bits)


def test_scaling_every_weight_changes_no_mean():
    # why steps.secure.weights may divide the weights by their gcd: the same rationals, each correctly rounded
    clients, counts = _clients(5, seed=1), [2, 3, 5, 7, 11]
    means = []
    for factor in (1, 6):
        weights = [c * factor for c in counts]
        bits = upload.segment_bits(list(SHAPES), sum(weights))
        sums = simulate.run(Context("d", 0), {i: upload.encode(t, w, bits) for i, (t, w) in enumerate(zip(clients, weights))},
                            bits, 3)
        means.append(upload.decode_means(sums, bits, sum(weights), SHAPES))
    for key in SHAPES:
        assert torch.equal(means[0][key], means[1][key]), key
