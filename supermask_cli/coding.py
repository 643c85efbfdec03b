"""Lossless coding of binary masks: bit packing and entropy coding against per-element probabilities.

Entropy coding uses constriction's ANS coder (``stream.stack.AnsCoder``) with a Bernoulli model
parameterised per element; compressed data is a sequence of little-endian uint32 words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import constriction
import numpy as np
import torch
import zstandard

from supermask_cli.errors import CheckpointError

PROB_FLOOR = 1e-6
"""Probabilities are clamped into [PROB_FLOOR, 1 - PROB_FLOOR] so that every bit stays codable."""

_BERNOULLI = constriction.stream.model.Bernoulli(perfect=False)


def _flat_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().reshape(-1).numpy()


def _clamped_probs(probs: torch.Tensor) -> np.ndarray:
    """Flat float64 copy of `probs` clamped into [PROB_FLOOR, 1 - PROB_FLOOR]; ValueError if not finite."""
    p = _flat_numpy(probs.to(torch.float64))
    if not np.isfinite(p).all():
        raise ValueError("mask probabilities must be finite")
    return np.clip(p, PROB_FLOOR, 1.0 - PROB_FLOOR)


def _flat_bits(mask: torch.Tensor, probs: torch.Tensor) -> np.ndarray:
    """Flat int32 0/1 array of `mask` (nonzero = 1); ValueError if its size differs from `probs`."""
    if mask.numel() != probs.numel():
        raise ValueError(f"mask has {mask.numel()} elements but probs has {probs.numel()}")
    return (_flat_numpy(mask) != 0).astype(np.int32)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool/0-1 tensor into a flat uint8 tensor, 8 elements per byte, little bit order, zero padding."""
    return torch.from_numpy(np.packbits(_flat_numpy(mask) != 0, bitorder="little"))


def unpack_bits(packed: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of `pack_bits`: a bool tensor of `shape`; CheckpointError on wrong length, dtype or padding."""
    numel = math.prod(shape)
    nbytes = (numel + 7) // 8
    if packed.dtype != torch.uint8 or packed.numel() != nbytes:
        raise CheckpointError(
            f"packed mask has {packed.numel()} {packed.dtype} values, expected {nbytes} uint8 bytes"
        )
    data = _flat_numpy(packed)
    if numel % 8 and data[-1] >> (numel % 8):
        raise CheckpointError("packed mask has nonzero padding bits")
    bits = np.unpackbits(data, count=numel, bitorder="little").astype(bool)
    return torch.from_numpy(bits).reshape(tuple(shape))


def encode_mask(mask: torch.Tensor, probs: torch.Tensor) -> bytes:
    """Entropy-code a binary mask against P(bit = 1) = `probs` (same numel); little-endian uint32 words."""
    bits = _flat_bits(mask, probs)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(bits, _BERNOULLI, _clamped_probs(probs))
    return coder.get_compressed().astype("<u4").tobytes()


def decode_mask(data: bytes, probs: torch.Tensor) -> torch.Tensor:
    """Inverse of `encode_mask`: a bool tensor of `probs.shape`; CheckpointError on malformed data."""
    if len(data) % 4:
        raise CheckpointError(f"coded mask is {len(data)} bytes, not a multiple of 4")
    p = _clamped_probs(probs)
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        bits = coder.decode(_BERNOULLI, p)
    except Exception as exc:  # constriction signals invalid data with assorted exception types
        raise CheckpointError(f"coded mask is malformed: {exc}") from exc
    if not coder.is_empty():
        raise CheckpointError("coded mask is malformed: data left over after decoding")
    return torch.from_numpy(bits.astype(bool)).reshape(probs.shape)


def ideal_bits(mask: torch.Tensor, probs: torch.Tensor) -> float:
    """Cross-entropy of `mask` under clamped `probs` in bits: sum of -log2 P(bit)."""
    bits = _flat_bits(mask, probs)
    p = _clamped_probs(probs)
    return float(-np.log2(np.where(bits == 1, p, 1.0 - p)).sum())


def entropy_bits(probs: torch.Tensor) -> float:
    """Sum of binary entropies H(p) in bits: the expected coded size of a mask sampled from `probs`."""
    p = probs.detach().to(torch.float64)
    return float((torch.special.entr(p) + torch.special.entr(1.0 - p)).sum() / math.log(2.0))


def zstd_packed_bytes(mask: torch.Tensor, level: int = 19) -> int:
    """Size in bytes of zstandard-compressing `pack_bits(mask)` at `level` (a benchmark baseline)."""
    return len(zstandard.ZstdCompressor(level=level).compress(pack_bits(mask).numpy().tobytes()))
