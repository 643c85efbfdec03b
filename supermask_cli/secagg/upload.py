"""An upload's tensors as secure-aggregation segments, and the survivors' sums back as the
weighted means the aggregation rules reduce to.

``mask/<module>`` (bool) -> w·m, unsigned, k = bits(W); ``head/<param>`` and ``scale/<module>``
(float) -> w·round(x / resolution), two's complement, k = bits(W·clip/resolution) + 1 (see
:mod:`.encoding`). W, the sum of the round's integer weights, bounds every sum, so nothing wraps.

The mean of a mask segment is (Σ w_i m_i) / W computed in float64 and rounded to float32, the
same operations on the same exact integers as the plaintext ``RunningMean``, so the global's
mask part is bit-identical; float parts are within resolution / 2 of the plaintext mean.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import SecureAggregationError
from . import encoding
from .encoding import FIXED, FixedPoint

INTEGER_GROUPS = ("mask",)
FIXED_GROUPS = ("head", "scale")


def integer_weight(weight: float, client: int | str) -> int:
    """A client's weight as the integer secure aggregation multiplies by (uniform, examples and
    bounded weightings give integers; anything else is refused)."""
    if not math.isfinite(weight) or weight != int(weight) or weight < 1:
        raise SecureAggregationError(f"client {client}: weight {weight} is not a positive integer, which secure aggregation needs")
    return int(weight)


def segment_bits(keys: list[str], total_weight: int, fp: FixedPoint = FIXED) -> dict[str, int]:
    """k per upload tensor for a round whose integer weights sum to at most ``total_weight``."""
    out = {}
    for key in keys:
        group = key.partition("/")[0]
        if group in INTEGER_GROUPS:
            out[key] = encoding.sum_bits(total_weight, 1)
        elif group in FIXED_GROUPS:
            out[key] = encoding.fixed_bits(total_weight, fp)
        else:
            raise SecureAggregationError(f"secure aggregation: upload tensor {key!r} has no integer encoding")
    return out


def encode(tensors: dict[str, torch.Tensor], weight: int, bits: dict[str, int], fp: FixedPoint = FIXED) -> dict[str, np.ndarray]:
    """One client's upload tensors as flat words mod 2^k, multiplied by its weight."""
    if set(tensors) != set(bits):
        raise SecureAggregationError(f"secure aggregation: upload tensors {sorted(tensors)} differ from the round's {sorted(bits)}")
    out = {}
    for key, value in tensors.items():
        flat = value.detach().reshape(-1).cpu()
        if key.partition("/")[0] in INTEGER_GROUPS:
            out[key] = encoding.encode_unsigned(flat.to(torch.uint8).numpy(), weight, bits[key], what=key)
        else:
            out[key] = encoding.encode_fixed(flat.to(torch.float64).numpy(), weight, bits[key], fp, what=key)
    return out


def rounding_margin(num_values: int, fp: FixedPoint = FIXED) -> float:
    """The most fixed-point rounding moves ``num_values`` floats in L2: √n · resolution / 2 (a
    client that clips its update for client-level DP clips to its bound minus this)."""
    return math.sqrt(num_values) * fp.resolution / 2


def decode_sums(sums: dict[str, np.ndarray], bits: dict[str, int], shapes: dict[str, tuple[int, ...]],
                fp: FixedPoint = FIXED) -> dict[str, torch.Tensor]:
    """The plain sums (float64; masks exact integers) in the tensors' shapes."""
    out = {}
    for key, words in sums.items():
        if key.partition("/")[0] in INTEGER_GROUPS:
            total = encoding.decode_unsigned(words).astype(np.float64)
        else:
            total = encoding.decode_fixed_sum(words, bits[key], 1, fp)  # the "mean" over a total weight of 1
        out[key] = torch.from_numpy(total).reshape(shapes[key])
    return out


def decode_means(sums: dict[str, np.ndarray], bits: dict[str, int], total_weight: int, shapes: dict[str, tuple[int, ...]],
                 fp: FixedPoint = FIXED) -> dict[str, torch.Tensor]:
    """The weighted means (float32, in the tensors' shapes) from the survivors' unmasked sums and
    the sum of their weights."""
    out = {}
    for key, words in sums.items():
        if key.partition("/")[0] in INTEGER_GROUPS:
            mean = torch.from_numpy(encoding.decode_unsigned(words).astype(np.float64)) / float(total_weight)
        else:
            mean = torch.from_numpy(encoding.decode_fixed_sum(words, bits[key], total_weight, fp))
        out[key] = mean.float().reshape(shapes[key])
    return out
