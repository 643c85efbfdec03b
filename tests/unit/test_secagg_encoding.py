"""Integer encodings mod 2^k: masks, votes, weights and fixed-point floats; k never wraps."""

from __future__ import annotations

import numpy as np
import pytest

from supermask_cli.errors import SecureAggregationError
from supermask_cli.secagg import encoding
from supermask_cli.secagg.encoding import FIXED, FixedPoint


@pytest.mark.parametrize("total,max_value", [(1, 1), (10, 1), (7, 3), (1023, 1), (1024, 1), (3 * 10**6, 1)])
def test_unsigned_k_holds_the_largest_sum_and_is_the_fewest(total, max_value):
    k = encoding.sum_bits(total, max_value)
    assert total * max_value < 2**k  # the largest sum fits ...
    assert total * max_value >= 2 ** (k - 1)  # ... and one bit fewer would wrap it


@pytest.mark.parametrize("total", [1, 5, 100, 12345])
def test_signed_k_holds_both_extremes_and_is_the_fewest(total):
    k = encoding.fixed_bits(total)
    bound = total * FIXED.max_int
    assert -(2 ** (k - 1)) <= -bound and bound <= 2 ** (k - 1) - 1
    assert bound > 2 ** (k - 2) - 1  # k - 1 bits would not hold +bound


def test_full_weight_masks_sum_without_wrapping():
    # every one of 13 clients votes 1 with the heaviest weight: the sum is exactly Σ w
    weights = [9, 1, 4, 7, 7, 2, 9, 3, 1, 1, 8, 5, 6]
    k = encoding.sum_bits(sum(weights), 1)
    total = np.zeros(5, dtype=encoding.word_dtype(k))
    for w in weights:
        total = encoding.add_mod(total, encoding.encode_unsigned(np.ones(5, np.uint8), w, k, what="m"), k)
    assert encoding.decode_unsigned(total).tolist() == [sum(weights)] * 5


def test_fixed_point_weighted_mean_within_half_a_step():
    # Prepare: 5 clients' float vectors over the whole clip range, integer weights
    rng = np.random.default_rng(0)
    fp = FixedPoint(clip=4.0, resolution=2.0**-10)
    xs = [rng.uniform(-4, 4, 1000).astype(np.float32) for _ in range(5)]
    ws = [3, 1, 7, 2, 5]
    k = encoding.fixed_bits(sum(ws), fp)
    # Execute
    total = np.zeros(1000, dtype=encoding.word_dtype(k))
    for x, w in zip(xs, ws):
        total = encoding.add_mod(total, encoding.encode_fixed(x, w, k, fp, what="head/w"), k)
    mean = encoding.decode_fixed_sum(total, k, sum(ws), fp)
    # Assert
    exact = sum(w * x.astype(np.float64) for x, w in zip(xs, ws)) / sum(ws)
    err = np.abs(mean - exact)
    assert err.max() <= fp.resolution / 2
    assert err.max() > fp.resolution / 8  # the bound is about the real error, not vacuous


def test_default_fixed_point_round_trip_within_resolution():
    x = np.array([-128.0, -1e-8, 0.0, 3.1415927, 127.99], dtype=np.float32)
    k = encoding.fixed_bits(1)
    assert np.abs(encoding.decode_fixed_sum(encoding.encode_fixed(x, 1, k, what="s"), k, 1) - x).max() <= FIXED.resolution / 2


def test_out_of_range_values_refused_with_their_name():
    k = encoding.fixed_bits(10)
    with pytest.raises(SecureAggregationError, match="head/classifier.weight: \\|value\\| 200 is over .* clip 128"):
        encoding.encode_fixed(np.array([1.0, -200.0]), 1, k, what="head/classifier.weight")
    with pytest.raises(SecureAggregationError, match="non-finite"):
        encoding.encode_fixed(np.array([np.nan]), 1, k, what="scale/x")
    with pytest.raises(SecureAggregationError, match="mask/q: values × weight 4"):
        encoding.encode_unsigned(np.array([0, 1]), 4, 2, what="mask/q")
    with pytest.raises(SecureAggregationError, match="positive integer"):
        encoding.encode_unsigned(np.array([0, 1]), 1.5, 8, what="mask/q")


def test_sums_over_64_bits_refused():
    with pytest.raises(SecureAggregationError, match="need 67 bits, over 64"):
        encoding.sum_bits(2**40, 2**25, signed=True)
