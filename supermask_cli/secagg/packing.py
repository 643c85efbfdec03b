"""k-bit words packed end to end, so a masked upload costs k bits per value, not a whole byte or word.

Word w_i occupies bits [i·k, (i+1)·k) of the stream, least significant bit first, bytes in little
bit order (as ``mask/*`` tensors are packed); the last byte is zero-padded. Masked words are
uniform, so nothing packs them smaller than k bits.
"""

from __future__ import annotations

import numpy as np

from ..errors import SecureAggregationError
from .prg import word_dtype

CHUNK = 1 << 17
"""Words per step: the bit matrix of a step is at most CHUNK × 64 bytes (8 MiB)."""


def packed_bytes(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def pack(words: np.ndarray, bits: int) -> np.ndarray:
    """The packed uint8 stream of ``words`` (each < 2^bits)."""
    words = np.asarray(words)
    if words.dtype != word_dtype(bits):
        raise SecureAggregationError(f"secure aggregation: {words.dtype} words cannot be packed as {bits}-bit values")
    if bits % 8 == 0:  # whole bytes: the little-endian bytes of the words are the stream
        return words.astype(words.dtype.newbyteorder("<")).view(np.uint8).copy()
    out = np.zeros(packed_bytes(words.size, bits), dtype=np.uint8)
    step = CHUNK - CHUNK % 8  # a multiple of 8 words is a whole number of bytes
    little, size = words.dtype.newbyteorder("<"), words.dtype.itemsize
    for start in range(0, words.size, step):
        chunk = words[start:start + step].astype(little)
        bitmat = np.unpackbits(chunk.view(np.uint8).reshape(-1, size), axis=1, bitorder="little")[:, :bits]
        packed = np.packbits(bitmat.reshape(-1), bitorder="little")
        offset = start * bits // 8
        out[offset:offset + packed.size] = packed
    return out


def unpack(data: np.ndarray, n: int, bits: int, *, what: str = "packed words") -> np.ndarray:
    """``n`` words of ``bits`` bits from :func:`pack`'s stream; wrong length or padding is refused."""
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    if data.size != packed_bytes(n, bits):
        raise SecureAggregationError(f"{what}: {data.size} bytes, expected {packed_bytes(n, bits)} for {n} {bits}-bit words")
    dtype = word_dtype(bits)
    if bits % 8 == 0:
        return data.view(dtype.newbyteorder("<")).astype(dtype)
    if (n * bits) % 8 and data[-1] >> ((n * bits) % 8):
        raise SecureAggregationError(f"{what}: non-zero padding bits after the last word")
    out = np.empty(n, dtype=dtype)
    step = CHUNK - CHUNK % 8
    for start in range(0, n, step):
        count = min(step, n - start)
        lo = start * bits // 8
        bitstream = np.unpackbits(data[lo:lo + packed_bytes(count, bits)], bitorder="little")[:count * bits]
        bitmat = np.zeros((count, 8 * dtype.itemsize), dtype=np.uint8)
        bitmat[:, :bits] = bitstream.reshape(count, bits)
        out[start:start + count] = np.packbits(bitmat, axis=1, bitorder="little").view(dtype.newbyteorder("<")).reshape(-1)
    return out
