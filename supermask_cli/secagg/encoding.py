"""What secure aggregation sums: integers mod 2^k, with k chosen so that the sum cannot wrap.

- masks (0/1) and threshold votes: w_i · m_i, unsigned; the sum Σ w_i m_i is exact, and the
  server divides by Σ w_i (bernoulli probs) or compares 2·Σ w_i m_i with Σ w_i (threshold
  majority: ties keep the weight), exactly as the plaintext rules do;
- integer example weights w_i themselves (a one-word segment), unsigned;
- floats (the head, scaling vectors) in fixed point: q = round(x / resolution) for x in
  [−clip, clip], two's complement mod 2^k, weighted by w_i. The decoded weighted mean is within
  resolution / 2 of the exact weighted mean of the clients' floats (each client's rounding error
  is at most resolution / 2); a value outside the clip range is refused, never clipped silently.

k: the sum of the round's weights W bounds Σ w_i |x_i| ≤ W · max|x|, so k = bits(W · max|x|)
(+1 for the sign of fixed-point values) can never wrap; k > 64 is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import SecureAggregationError
from .prg import MAX_BITS, modulus_mask, word_dtype


@dataclass(frozen=True)
class FixedPoint:
    clip: float = 128.0
    """Largest |x| accepted."""
    resolution: float = 2.0**-24
    """One integer step; a power of two, so that every step is exact in float32 and float64."""

    @property
    def max_int(self) -> int:
        return math.ceil(self.clip / self.resolution)


FIXED = FixedPoint()
"""The fixed point of heads and scaling vectors: |x| ≤ 128 at 2^-24 (≈ 6e-8) resolution."""


def sum_bits(total_weight: int, max_value: int, *, signed: bool = False) -> int:
    """The fewest bits k with which a sum of Σ w_i x_i, Σ w_i ≤ ``total_weight`` and
    |x_i| ≤ ``max_value``, cannot wrap mod 2^k (signed: as two's complement)."""
    if total_weight < 1 or max_value < 0:
        raise SecureAggregationError(f"secure aggregation: total weight {total_weight} and max value {max_value} must be positive")
    bound = int(total_weight) * int(max_value)
    bits = max(bound.bit_length(), 1) + (1 if signed else 0)
    if bits > MAX_BITS:
        raise SecureAggregationError(
            f"secure aggregation: sums up to {bound} need {bits} bits, over {MAX_BITS}; use fewer or lighter clients "
            "(federation.weighting: uniform or bounded) or a coarser fixed point")
    return bits


def _check_weight(weight: int) -> int:
    if int(weight) != weight or weight < 1:
        raise SecureAggregationError(f"secure aggregation: a client weight must be a positive integer, got {weight}")
    return int(weight)


def encode_unsigned(values: np.ndarray, weight: int, bits: int, *, what: str) -> np.ndarray:
    """w · values for non-negative integer ``values`` (masks, votes, counts), as words mod 2^bits."""
    weight = _check_weight(weight)
    v = np.asarray(values)
    if v.size and (v.min() < 0 or int(v.max()) * weight >= 1 << bits):
        raise SecureAggregationError(f"{what}: values × weight {weight} fall outside 0..2^{bits}−1")
    return (v.astype(np.uint64) * np.uint64(weight)).astype(word_dtype(bits))


def decode_unsigned(words: np.ndarray) -> np.ndarray:
    """The exact integer sum (int64; every k here is < 64 for unsigned segments in practice)."""
    return np.asarray(words).astype(np.uint64).astype(np.int64)


def fixed_bits(total_weight: int, fp: FixedPoint = FIXED) -> int:
    return sum_bits(total_weight, fp.max_int, signed=True)


def encode_fixed(values: np.ndarray, weight: int, bits: int, fp: FixedPoint = FIXED, *, what: str) -> np.ndarray:
    """w · round(values / resolution) as two's-complement words mod 2^bits."""
    weight = _check_weight(weight)
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size and not np.isfinite(x).all():
        raise SecureAggregationError(f"{what}: non-finite values cannot be aggregated securely")
    if x.size and np.abs(x).max() > fp.clip:
        raise SecureAggregationError(f"{what}: |value| {np.abs(x).max():.4g} is over secure aggregation's fixed-point clip {fp.clip:g}")
    q = np.rint(x / fp.resolution).astype(np.int64) * np.int64(weight)
    return (q.view(np.uint64) & np.uint64((1 << bits) - 1)).astype(word_dtype(bits))


def decode_fixed_sum(words: np.ndarray, bits: int, total_weight: int, fp: FixedPoint = FIXED) -> np.ndarray:
    """The weighted mean (float64) from the sum of :func:`encode_fixed` words and Σ w_i."""
    shift = np.uint64(64 - bits)  # sign-extend the k-bit two's complement word to 64 bits
    signed = (np.asarray(words).astype(np.uint64) << shift).view(np.int64) >> shift.astype(np.int64)
    return signed.astype(np.float64) * fp.resolution / total_weight


def add_mod(a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    out = a + b
    return out & modulus_mask(bits) if bits < out.dtype.itemsize * 8 else out


def sub_mod(a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    out = a - b
    return out & modulus_mask(bits) if bits < out.dtype.itemsize * 8 else out
