"""Tests for supermask_cli.coding: bit packing, entropy coding and sparse coding of binary masks."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from supermask_cli.coding import (
    PROB_FLOOR,
    SPARSE_BUCKETS,
    decode_mask,
    decode_sparse,
    encode_mask,
    encode_sparse,
    entropy_bits,
    ideal_bits,
    pack_bits,
    sparse_plan,
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


@pytest.mark.parametrize("encoding, slack", [("coded", 1.01), ("sparse", 1.03)])
def test_coded_size_close_to_ideal(encoding, slack):
    n = 200_000
    probs = torch.full((n,), 0.999)
    probs[torch.rand(n, generator=_gen(3)) < 0.05] = 0.5
    mask = _sample(probs, seed=4)
    data = (_round_trip if encoding == "coded" else _sparse_round_trip)(mask, probs)
    ideal = ideal_bits(mask, probs)
    assert ideal - 64 <= 8 * len(data) <= ideal * slack + 64 * 8
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


# --- sparse coding -----------------------------------------------------------------------


def _sparse_round_trip(mask: torch.Tensor, probs: torch.Tensor) -> bytes:
    plan = sparse_plan(probs)
    data = encode_sparse(mask, plan)
    out = decode_sparse(data, plan)
    assert out.dtype == torch.bool and out.shape == probs.shape
    assert torch.equal(out, mask.bool().reshape(probs.shape))
    return data


SPECIAL_PROBS = [0.0, 1.0, 0.5, PROB_FLOOR, 1 - PROB_FLOOR, PROB_FLOOR / 3, 2**-1.5, 0.25, 0.999]
PROBS = st.one_of(st.floats(0, 1, width=32), st.sampled_from(SPECIAL_PROBS))


@settings(max_examples=300, deadline=None, database=None)
@given(
    probs=st.one_of(
        st.lists(PROBS, max_size=300),
        st.tuples(PROBS, st.integers(0, 3000)).map(lambda t: [t[0]] * t[1]),  # all-equal probs
    ),
    seed=st.integers(0, 2**31),
    flip=st.floats(0, 1),
)
def test_sparse_round_trip_property(probs, seed, flip):
    p = torch.tensor(probs, dtype=torch.float32)
    # a mask sampled from the probs, then a random fraction of its bits flipped
    mask = _sample(p, seed) ^ (torch.rand(p.shape, generator=_gen(seed + 1)) < flip)
    _sparse_round_trip(mask, p)


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5, 7), (0,), (0, 4)])
def test_sparse_round_trip_shapes(shape):
    probs = torch.rand(shape, generator=_gen(8))
    _sparse_round_trip(_sample(probs), probs)
    _sparse_round_trip(~_sample(probs), probs)


def test_sparse_buckets_are_half_octaves_of_the_minority_probability():
    p = torch.tensor([0.5, 0.4, 2**-1.5, 0.3, 0.25, 0.75, 0.01, 0.99, PROB_FLOOR, 0.0, 1.0])
    plan = sparse_plan(p)
    bucket = torch.zeros(len(p), dtype=torch.long)
    for b in range(SPARSE_BUCKETS):
        bucket[torch.from_numpy(plan.order[plan.bounds[b] : plan.bounds[b + 1]]).long()] = b
    assert bucket.tolist() == [0, 0, 1, 1, 2, 2, 11, 11, 37, 37, 37]
    assert SPARSE_BUCKETS == 38
    assert plan.likely.tolist() == [True, False, False, False, False, True, False, True, False, False, True]


def test_sparse_all_likely_is_one_byte_per_nonempty_bucket():
    probs = torch.tensor([0.9, 0.1, 0.5, 0.999, 0.001] * 10)
    assert encode_sparse(probs >= 0.5, sparse_plan(probs)) == b"\x00\x00\x00"  # buckets 0, 6, 19


# --- malformed sparse data ---------------------------------------------------------------

PLAN_1000 = sparse_plan(torch.full((1000,), 0.99))  # one bucket of 1000 elements, likely bit 1


def _sparse_refused(data: bytes, match: str, plan=PLAN_1000) -> None:
    with pytest.raises(CheckpointError, match=match) as info:
        decode_sparse(data, plan)
    assert "\n" not in str(info.value)


def test_sparse_hand_built_stream():
    # one surprise at position 40: count 1, k 5, quotient 1 (unary 01), remainder 8 (5 bits)
    out = decode_sparse(bytes([1, 5, 0b10, 0b01000]), PLAN_1000)
    assert torch.nonzero(~out).flatten().tolist() == [40]
    # the encoder's choice: k 4 costs as much (quotient 2, unary 001), and ties go to the smaller k
    assert encode_sparse(out, PLAN_1000) == bytes([1, 4, 0b100, 0b1000])


@pytest.mark.parametrize("data,match", [
    (b"", "truncated in its header"),
    (bytes([1]), "truncated in its header"),
    (bytes([0x80]), "truncated in its header"),
    (bytes([0x80, 0x00]), "non-minimal"),
    (bytes([0xFF] * 10), "overlong"),
    (bytes([0xE9, 0x07, 0]), "claims 1001 surprises in bucket 11 of 1000"),  # 1001 as a varint
    (bytes([0xFF] * 8 + [0x7F, 0]), "claims"),  # 2**63 - 1 surprises
    (bytes([1, 11, 0x01, 0, 0]), "Rice parameter 11 out of range"),  # 1000 elements: k <= 10
    (bytes([201, 1, 4, 0xFF]), "Rice parameter 4 out of range"),  # 201 * (4 + 1) bits > 1000
    (bytes([1, 5, 0b10]), "codes 0 gaps, expected 1"),  # remainder byte missing: the unary byte is read as it
    (bytes([1, 5, 0b10, 0b01000, 0]), "codes 2 gaps, expected 1"),  # a trailing byte: the remainder is read as unary
    (bytes([1, 5, 0b10, 0, 0b01000]), "stray bytes"),  # a zero byte after the unary stream
    (bytes([0, 0]), "1-byte unary stream, at most 0 possible"),  # no surprises, a trailing byte
    (bytes([1, 5, 0b110, 0b01000]), "codes 2 gaps, expected 1"),
    (bytes([1, 5, 0b10, 0b101000]), "nonzero padding bits"),
    (bytes([1, 5, 0, 0, 0, 0x80, 0b01000]), "past the end of its bucket"),  # gap 31*32 + 8 = 1000
    (bytes([1, 5]) + bytes(40) + bytes([1, 0]), "unary stream, at most 4 possible"),
])
def test_sparse_malformed_is_refused(data, match):
    _sparse_refused(data, match)


def test_sparse_every_truncation_and_extension_is_refused():
    probs = torch.rand(5000, generator=_gen(9)) ** 4
    mask = _sample(probs, seed=10)
    plan = sparse_plan(probs)
    data = encode_sparse(mask, plan)
    for i in range(len(data)):
        with pytest.raises(CheckpointError):
            decode_sparse(data[:i], plan)
    for extra in (b"\x00", b"\x01", b"\xff", b"\x00\x00"):
        with pytest.raises(CheckpointError):
            decode_sparse(data + extra, plan)


@settings(max_examples=300, deadline=None, database=None)
@given(edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.floats(0, 1), garbage=st.binary(max_size=64))
def test_sparse_corrupted_streams_never_crash(edits, cut, garbage):
    probs = torch.rand(3000, generator=_gen(11)) ** 3
    plan = sparse_plan(probs)
    data = bytearray(encode_sparse(_sample(probs, seed=12), plan))
    for where, value in edits:
        data[min(int(where * len(data)), len(data) - 1)] = value
    for blob in (bytes(data), bytes(data[: int(cut * len(data))]) + garbage, garbage):
        try:
            out = decode_sparse(blob, plan)
        except CheckpointError as exc:
            assert "\n" not in str(exc)
            continue
        assert out.shape == probs.shape and out.dtype == torch.bool


def test_sparse_mask_size_mismatch_and_nan_probs():
    with pytest.raises(ValueError):
        encode_sparse(torch.zeros(3, dtype=torch.bool), sparse_plan(torch.full((4,), 0.5)))
    with pytest.raises(ValueError):
        sparse_plan(torch.tensor([0.5, float("nan")]))
