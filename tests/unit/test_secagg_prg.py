"""The masks' PRG: ChaCha20 keystream as words mod 2^k, reproducible from its documented format."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from supermask_cli.errors import SecureAggregationError
from supermask_cli.secagg import prg

SEED = bytes(range(32))


def test_words_are_the_chacha20_keystream_little_endian():
    # Prepare: the documented format, built by hand
    keystream = Cipher(algorithms.ChaCha20(SEED, prg.nonce("mask/a")), mode=None).encryptor().update(bytes(40))
    # Execute
    words = prg.expand(SEED, 10, 32, "mask/a")
    # Assert
    assert words.dtype == np.uint32
    assert words.tolist() == [int.from_bytes(keystream[4 * k:4 * k + 4], "little") for k in range(10)]
    assert prg.nonce("mask/a")[:4] == b"\0\0\0\0"  # the block counter starts at 0


@pytest.mark.parametrize("bits", [1, 5, 8, 13, 31, 33, 64])
def test_words_keep_exactly_k_bits(bits):
    words = prg.expand(SEED, 4096, bits)
    assert words.dtype == prg.word_dtype(bits)
    assert int(words.max()) < 2**bits
    assert int(words.max()) >= (2**bits - 1) * 0.9  # the high bit is used, not dropped


def test_streams_seeds_and_prefixes():
    a = prg.expand(SEED, 1000, 20, "mask/a")
    assert np.array_equal(a, prg.expand(SEED, 1000, 20, "mask/a"))  # deterministic
    assert np.array_equal(a[:10], prg.expand(SEED, 10, 20, "mask/a"))  # prefix-consistent
    assert (a != prg.expand(SEED, 1000, 20, "mask/b")).mean() > 0.99  # another segment's stream
    assert (a != prg.expand(bytes(32), 1000, 20, "mask/a")).mean() > 0.99  # another seed


def test_bad_seed_and_word_size_refused():
    with pytest.raises(SecureAggregationError, match="32 bytes"):
        prg.expand(SEED[:16], 4, 8)
    with pytest.raises(SecureAggregationError, match="word size 65"):
        prg.expand(SEED, 4, 65)
