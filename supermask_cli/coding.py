"""Lossless coding of binary masks: bit packing and entropy coding against per-element probabilities.

Entropy coding uses constriction's ANS coder (``stream.stack.AnsCoder``) with a Bernoulli model
parameterised per element; compressed data is a sequence of little-endian uint32 words.

Sparse coding stores only the *surprises*, the bits that differ from the likelier value under
the probabilities (p >= 0.5), grouped into half-octave buckets of the minority probability
q = min(p, 1 - p); within a bucket the gaps between surprises are Golomb-Rice coded.
Layout of a sparse stream (bucket sizes and order come from the probabilities, see `SparsePlan`):

- for each non-empty bucket in bucket order: its surprise count (LEB128 varint), then, when the
  count is nonzero, the Rice parameter k (one byte);
- the unary stream: for each surprise in bucket order, ``gap >> k`` zeros then a one;
  ``np.packbits`` little bit order, ending in the byte that holds the last one;
- the remainder stream: for each surprise, the low k bits of its gap, least significant first;
  ``np.packbits`` little bit order, zero padding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import constriction
import numpy as np
import torch

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
    try:
        import zstandard
    except ImportError:
        raise ImportError("the zstd baseline needs zstandard: pip install -e '.[bench]'") from None
    return len(zstandard.ZstdCompressor(level=level).compress(pack_bits(mask).numpy().tobytes()))


# --- sparse coding -------------------------------------------------------------------------


def _buckets(q: np.ndarray) -> np.ndarray:
    """Half-octave bin floor(2 * -log2 q) - 2 of each q in (0, 0.5], exactly: q = m * 2^e by frexp, no log."""
    m, e = np.frexp(q)
    return -2 * e - 2 + (m <= np.sqrt(q.dtype.type(0.5))) + (m == 0.5)


_FLOOR32 = np.float32(PROB_FLOOR)
SPARSE_BUCKETS = int(_buckets(np.array([_FLOOR32]))[0]) + 1
"""Buckets of q = min(p, 1 - p) clamped into [PROB_FLOOR, 0.5]: bucket 0 holds q in (2^-1.5, 2^-1]."""


@dataclass(frozen=True)
class SparsePlan:
    """What sparse coding needs from the reference probabilities; compute once, reuse per file."""

    shape: tuple[int, ...]
    likely: np.ndarray
    """Flat bool: the likelier bit of each element (p >= 0.5)."""
    order: np.ndarray
    """Flat element indices grouped by bucket, flat order within a bucket."""
    bounds: np.ndarray
    """int64, SPARSE_BUCKETS + 1: bucket b is ``order[bounds[b]:bounds[b + 1]]``."""

    @property
    def sizes(self) -> np.ndarray:
        """Elements per bucket."""
        return np.diff(self.bounds)


def sparse_plan(probs: torch.Tensor) -> SparsePlan:
    """Buckets and likelier bits of `probs` (P(bit = 1)), in float32 so that every machine agrees."""
    p = _flat_numpy(probs.to(torch.float32))
    if not np.isfinite(p).all():
        raise ValueError("mask probabilities must be finite")
    bucket = _buckets(np.clip(np.minimum(p, 1 - p), _FLOOR32, np.float32(0.5))).astype(np.uint8)
    index_type = np.int32 if p.size < 2**31 else np.int64
    order = np.argsort(bucket, kind="stable").astype(index_type)
    bounds = np.concatenate([[0], np.cumsum(np.bincount(bucket, minlength=SPARSE_BUCKETS))]).astype(np.int64)
    return SparsePlan(shape=tuple(probs.shape), likely=p >= 0.5, order=order, bounds=bounds)


MAX_RICE = 56
"""Largest Rice parameter a decoder accepts (a remainder and its bit offset fit one uint64)."""


def _max_rice(size: int) -> int:
    """Largest useful Rice parameter in a bucket of `size` elements (gaps are below `size`)."""
    return max(size - 1, 0).bit_length()


def _rice_parameter(gaps: np.ndarray) -> int:
    """The k minimising the bits ``sum(gaps >> k) + len(gaps) * (k + 1)``; convex in k, ties to the smaller.

    Raising k by one saves ``sum(ceil((gaps >> k) / 2))`` unary bits and costs one bit per gap."""
    k = 0
    while int((((gaps >> k) + 1) >> 1).sum()) > len(gaps):
        k += 1
    return k


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the LEB128 varint at `pos`; CheckpointError if truncated or overlong."""
    value = 0
    for i in range(9):
        if pos + i >= len(data):
            raise CheckpointError("sparse mask is truncated in its header")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i:
                raise CheckpointError("sparse mask has a non-minimal count")
            return value, pos + i + 1
    raise CheckpointError("sparse mask has an overlong count")


def encode_sparse(mask: torch.Tensor, plan: SparsePlan) -> bytes:
    """Sparse-code a binary mask against `plan` (same numel); see the module docstring for the layout."""
    if mask.numel() != plan.likely.size:
        raise ValueError(f"mask has {mask.numel()} elements but the plan has {plan.likely.size}")
    ranks = np.flatnonzero((_flat_numpy(mask) != 0)[plan.order] != plan.likely[plan.order])
    cuts = np.searchsorted(ranks, plan.bounds)
    header = bytearray()
    quotients: list[np.ndarray] = []
    remainders: list[np.ndarray] = []
    for b in np.flatnonzero(plan.sizes):
        positions = ranks[cuts[b] : cuts[b + 1]] - plan.bounds[b]
        header += _varint(len(positions))
        if not len(positions):
            continue
        gaps = np.diff(positions, prepend=-1) - 1
        k = _rice_parameter(gaps)
        header.append(k)
        quotients.append(gaps >> k)
        remainders.append(((gaps[:, None] >> np.arange(k)) & 1).astype(np.uint8).ravel())
    ends = np.cumsum(np.concatenate([np.zeros(0, np.int64), *quotients]) + 1) - 1
    unary = np.zeros(int(ends[-1]) + 1 if len(ends) else 0, dtype=bool)
    unary[ends] = True
    rem = np.concatenate([np.zeros(0, np.uint8), *remainders])
    streams = (np.packbits(s, bitorder="little").tobytes() for s in (unary, rem))
    return bytes(header) + b"".join(streams)


def _read_sparse_header(data: bytes, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(surprise count, Rice parameter) per bucket and the header length; every value checked."""
    counts = np.zeros(len(sizes), dtype=np.int64)
    ks = np.zeros(len(sizes), dtype=np.int64)
    pos = 0
    for b in np.flatnonzero(sizes):
        size = int(sizes[b])
        count, pos = _read_varint(data, pos)
        if count > size:
            raise CheckpointError(f"sparse mask claims {count} surprises in bucket {b} of {size} elements")
        if count:
            if pos >= len(data):
                raise CheckpointError("sparse mask is truncated in its header")
            k = data[pos]
            # the encoder's k never costs more bits than k = 0, which is at most one per element
            if k > min(_max_rice(size), MAX_RICE) or count * (k + 1) > size:
                raise CheckpointError(f"sparse mask has Rice parameter {k} out of range in bucket {b}")
            counts[b], ks[b] = count, k
            pos += 1
    return counts, ks, pos


def _fields(stream: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Consecutive little-endian bit fields of `widths` (<= MAX_RICE) bits each, from the packed bytes `stream`."""
    starts = np.cumsum(widths) - widths
    span = (14 + int(widths.max(initial=0))) // 8  # bytes a field can touch
    padded = np.concatenate([stream, np.zeros(span, np.uint8)]).astype(np.int64)
    first = starts >> 3
    words = padded[first]
    for j in range(1, span):
        words |= padded[first + j] << (8 * j)
    return (words >> (starts & 7)) & ((1 << widths) - 1)


def decode_sparse(data: bytes, plan: SparsePlan) -> torch.Tensor:
    """Inverse of `encode_sparse`: a bool tensor of `plan.shape`; CheckpointError on malformed data.

    Every size is bounded by the plan's bucket sizes before anything is allocated."""
    sizes = plan.sizes
    counts, ks, pos = _read_sparse_header(data, sizes)
    rem_bits = int((counts * ks).sum())
    unary_len = len(data) - pos - (rem_bits + 7) // 8
    if unary_len < 0:
        raise CheckpointError("sparse mask is truncated")
    max_unary = (int(np.where(counts > 0, ((sizes - counts) >> ks) + counts, 0).sum()) + 7) // 8
    if unary_len > max_unary:
        raise CheckpointError(f"sparse mask has a {unary_len}-byte unary stream, at most {max_unary} possible")
    buf = np.frombuffer(data, dtype=np.uint8, offset=pos)
    ends = np.flatnonzero(np.unpackbits(buf[:unary_len], bitorder="little"))
    total = int(counts.sum())
    if len(ends) != total:
        raise CheckpointError(f"sparse mask's unary stream codes {len(ends)} gaps, expected {total}")
    if unary_len != (int(ends[-1]) // 8 + 1 if total else 0):
        raise CheckpointError("sparse mask has stray bytes after its unary stream")
    rem = buf[unary_len:]
    if rem_bits % 8 and rem[-1] >> (rem_bits % 8):
        raise CheckpointError("sparse mask has nonzero padding bits")
    k = np.repeat(ks, counts)
    gaps = ((np.diff(ends, prepend=-1) - 1) << k) | _fields(rem, k)
    ranks = np.cumsum(gaps + 1) - 1
    used = np.flatnonzero(counts)
    firsts = np.cumsum(counts[used]) - counts[used]
    before = np.where(firsts > 0, ranks[firsts - 1] + 1, 0)
    positions = ranks - np.repeat(before, counts[used])
    if (positions[firsts + counts[used] - 1] >= sizes[used]).any():
        raise CheckpointError("sparse mask has a surprise past the end of its bucket")
    flat = plan.order[positions + np.repeat(plan.bounds[used], counts[used])]
    bits = plan.likely.copy()
    bits[flat] = ~bits[flat]
    return torch.from_numpy(bits).reshape(plan.shape)
