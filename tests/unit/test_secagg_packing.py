"""k-bit packing of masked words: exact round trip, k bits per word, padding and length checked."""

from __future__ import annotations

import numpy as np
import pytest

from supermask_cli.errors import SecureAggregationError
from supermask_cli.secagg import packing, prg


@pytest.mark.parametrize("bits", [1, 3, 4, 7, 8, 13, 16, 27, 33, 64])
@pytest.mark.parametrize("n", [1, 9, 1000])
def test_round_trip_in_k_bits_per_word(bits, n):
    words = prg.expand(bytes(32), n, bits)
    data = packing.pack(words, bits)
    assert data.size == (n * bits + 7) // 8
    assert np.array_equal(packing.unpack(data, n, bits), words)


def test_bit_order_is_lsb_first_little_bit_order():
    # words 1, 2, 3 of 3 bits: bits 100 010 110 -> byte 0 = 0b11010001, byte 1 = 0b0
    data = packing.pack(np.array([1, 2, 3], dtype=np.uint8), 3)
    assert data.tolist() == [0b11010001, 0b0]


def test_many_chunks(monkeypatch):
    monkeypatch.setattr(packing, "CHUNK", 24)
    words = prg.expand(bytes(32), 1001, 11)
    assert np.array_equal(packing.unpack(packing.pack(words, 11), 1001, 11), words)


def test_bad_streams_refused():
    data = packing.pack(np.array([1, 2, 3], dtype=np.uint8), 3)
    with pytest.raises(SecureAggregationError, match="mask/x: 1 bytes, expected 2"):
        packing.unpack(data[:1], 3, 3, what="mask/x")
    data[1] = 0b10
    with pytest.raises(SecureAggregationError, match="non-zero padding"):
        packing.unpack(data, 3, 3)
    with pytest.raises(SecureAggregationError, match="cannot be packed"):
        packing.pack(np.array([1], dtype=np.uint16), 3)
