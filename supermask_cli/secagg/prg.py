"""The pseudorandom generator of the masks: a 32-byte seed expanded by ChaCha20 into words mod 2^k.

Format (so that another implementation can reproduce it byte for byte): the key is the seed; the
16-byte nonce that ``cryptography`` takes is a 4-byte little-endian block counter (0) followed by
the first 12 bytes of SHA-256(``b"supermask-secagg-prg-v1\\0" + stream``), one stream per named
segment of an upload; the keystream is read as little-endian words of the smallest unsigned type
of 8, 16, 32 or 64 bits that holds k bits, and each word keeps its low k bits. Low bits of uniform
words are uniform, so the output is uniform mod 2^k.
"""

from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from ..errors import SecureAggregationError

SEED_BYTES = 32
MAX_BITS = 64
_DOMAIN = b"supermask-secagg-prg-v1\0"


def word_dtype(bits: int) -> np.dtype:
    """The smallest unsigned little-endian dtype with at least ``bits`` bits."""
    if not 1 <= bits <= MAX_BITS:
        raise SecureAggregationError(f"secure aggregation: word size {bits} bits is outside 1..{MAX_BITS}")
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if np.dtype(dtype).itemsize * 8 >= bits:
            return np.dtype(dtype)
    raise AssertionError("unreachable")


def modulus_mask(bits: int):
    """2^bits − 1 in the word dtype of ``bits``."""
    return word_dtype(bits).type((1 << bits) - 1)


def nonce(stream: str) -> bytes:
    return b"\0\0\0\0" + hashlib.sha256(_DOMAIN + stream.encode()).digest()[:12]


def expand(seed: bytes, n: int, bits: int, stream: str = "") -> np.ndarray:
    """``n`` pseudorandom words mod 2^bits from ``seed`` (32 bytes), one independent stream per name."""
    if len(seed) != SEED_BYTES:
        raise SecureAggregationError(f"secure aggregation: a PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
    dtype = word_dtype(bits)
    encryptor = Cipher(algorithms.ChaCha20(seed, nonce(stream)), mode=None).encryptor()
    raw = encryptor.update(bytes(n * dtype.itemsize))
    words = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)  # a writable native copy
    if bits < dtype.itemsize * 8:
        words &= modulus_mask(bits)
    return words
