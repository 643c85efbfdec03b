"""Tests for supermask_cli.coding: bit packing and entropy coding of binary masks."""

import math

import pytest
import torch

from supermask_cli.coding import (
    PROB_FLOOR,
    decode_mask,
    encode_mask,
    entropy_bits,
    ideal_bits,
    pack_bits,
    unpack_bits,
    zstd_packed_bytes,
)
from supermask_cli.errors import CheckpointError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sample(probs: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return torch.rand(probs.shape, generator=_gen(seed), dtype=torch.float64) < probs


# --- bit packing -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (9,), (1001,), (3, 5, 7), (0,)])
def test_pack_unpack_round_trip(shape):
    mask = torch.rand(shape, generator=_gen()) < 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.shape == ((mask.numel() + 7) // 8,)
    out = unpack_bits(packed, shape)
    assert out.dtype == torch.bool and torch.equal(out, mask)


def test_pack_bits_exact_bytes():
    mask = torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1])  # 0-1 ints are accepted too
    assert pack_bits(mask).tolist() == [0b00000001, 0b00000110]


def test_unpack_rejects_nonzero_padding_and_bad_length():
    with pytest.raises(CheckpointError, match="padding"):
        unpack_bits(torch.tensor([0b00001000], dtype=torch.uint8), (3,))
    assert unpack_bits(torch.tensor([0b00000101], dtype=torch.uint8), (3,)).tolist() == [True, False, True]
    with pytest.raises(CheckpointError):
        unpack_bits(torch.zeros(2, dtype=torch.uint8), (3,))
    with pytest.raises(CheckpointError):
        unpack_bits(torch.zeros(1, dtype=torch.int32), (3,))


# --- entropy coding round trips ----------------------------------------------------------


def _round_trip(mask: torch.Tensor, probs: torch.Tensor) -> bytes:
    data = encode_mask(mask, probs)
    assert isinstance(data, bytes) and len(data) % 4 == 0
    out = decode_mask(data, probs)
    assert out.dtype == torch.bool and out.shape == probs.shape
    assert torch.equal(out, mask.bool().reshape(probs.shape))
    return data


@pytest.mark.parametrize("shape", [(1,), (7,), (1001,), (3, 5, 7)])
def test_round_trip_random_probs(shape):
    probs = torch.rand(shape, generator=_gen(1))
    _round_trip(_sample(probs), probs)


def test_round_trip_skewed_probs():
    probs = torch.full((20_000,), 0.999)
    _round_trip(_sample(probs), probs)


def test_round_trip_certain_probs_with_matching_and_mismatching_bits():
    probs = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0] * 50)
    matching = probs.bool()
    mismatching = ~matching
    _round_trip(matching, probs)
    data = _round_trip(mismatching, probs)
    assert 8 * len(data) <= ideal_bits(mismatching, probs) + 64
    assert ideal_bits(mismatching, probs) == pytest.approx(300 * -math.log2(PROB_FLOOR))


@pytest.mark.parametrize("fill", [False, True])
def test_round_trip_constant_masks(fill):
    probs = torch.rand(513, generator=_gen(2))
    _round_trip(torch.full((513,), fill), probs)


def test_round_trip_empty():
    probs = torch.empty(0)
    assert _round_trip(torch.empty(0, dtype=torch.bool), probs) == b""


def test_mask_probs_size_mismatch_and_nan_probs():
    with pytest.raises(ValueError):
        encode_mask(torch.zeros(3, dtype=torch.bool), torch.full((4,), 0.5))
    with pytest.raises(ValueError):
        encode_mask(torch.zeros(2, dtype=torch.bool), torch.tensor([0.5, float("nan")]))


def test_coded_size_close_to_ideal():
    n = 200_000
    probs = torch.full((n,), 0.999)
    probs[torch.rand(n, generator=_gen(3)) < 0.05] = 0.5
    mask = _sample(probs, seed=4)
    data = _round_trip(mask, probs)
    ideal = ideal_bits(mask, probs)
    assert 8 * len(data) <= ideal * 1.01 + 64 * 8
    assert 8 * len(data) >= ideal - 64
    assert zstd_packed_bytes(mask) > len(data)


# --- malformed or mismatched data --------------------------------------------------------


def _decodes_wrong_or_raises(data: bytes, probs: torch.Tensor, original: torch.Tensor) -> None:
    try:
        out = decode_mask(data, probs)
    except CheckpointError:
        return
    assert out.shape == probs.shape and out.dtype == torch.bool
    assert not torch.equal(out, original)


def test_decode_against_different_probs():
    probs = torch.rand(5000, generator=_gen(5))
    mask = _sample(probs)
    data = encode_mask(mask, probs)
    _decodes_wrong_or_raises(data, 1.0 - probs, mask)
    _decodes_wrong_or_raises(data, torch.full((5000,), 0.5), mask)


def test_decode_truncated_or_extended():
    probs = torch.rand(5000, generator=_gen(6))
    mask = _sample(probs)
    data = encode_mask(mask, probs)
    for bad in (data[:-4], data[4:], data[: len(data) // 2], data + b"\x01\x00\x00\x00", b""):
        _decodes_wrong_or_raises(bad, probs, mask)
    with pytest.raises(CheckpointError, match="multiple of 4"):
        decode_mask(data[:-1], probs)


def test_decode_garbage_never_crashes():
    probs = torch.rand(2000, generator=_gen(7))
    for seed in range(50):
        length = 4 * int(torch.randint(0, 300, (1,), generator=_gen(seed)))
        garbage = torch.randint(0, 256, (length,), generator=_gen(100 + seed), dtype=torch.uint8)
        try:
            out = decode_mask(garbage.numpy().tobytes(), probs)
        except CheckpointError:
            continue
        assert out.shape == probs.shape
    with pytest.raises(CheckpointError):
        decode_mask(b"\x01\x00\x00\x00\x00\x00\x00\x00", probs)  # trailing zero word


# --- size estimates ----------------------------------------------------------------------


def test_entropy_and_ideal_bits_exact():
    half = torch.full((6,), 0.5)
    assert entropy_bits(half) == pytest.approx(6.0)
    assert ideal_bits(torch.tensor([1, 0, 1, 1, 0, 0]), half) == pytest.approx(6.0)
    assert entropy_bits(torch.tensor([0.0, 1.0])) == 0.0
    assert entropy_bits(torch.tensor([0.25])) == pytest.approx(-(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75)))
    assert ideal_bits(torch.tensor([1, 0]), torch.tensor([0.25, 0.25])) == pytest.approx(2 - math.log2(0.75))
    assert ideal_bits(torch.tensor([True, False]), torch.tensor([1.0, 0.0])) == pytest.approx(
        -2 * math.log2(1 - PROB_FLOOR)
    )
