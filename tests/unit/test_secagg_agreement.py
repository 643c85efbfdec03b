"""X25519 + HKDF key agreement bound to run, round and pair; ChaCha20-Poly1305 channels."""

from __future__ import annotations

import pytest

from supermask_cli.errors import SecureAggregationError
from supermask_cli.secagg import agreement
from supermask_cli.secagg.agreement import Context

CTX = Context("digest-a", 3)


def _pair():
    a, b = agreement.new_private_key(), agreement.new_private_key()
    return a, b, agreement.public_key(a), agreement.public_key(b)


def test_pair_seed_is_shared_and_bound_to_its_context():
    a, b, pa, pb = _pair()
    seed = agreement.pair_seed(a, pb, CTX, 1, 2)
    assert seed == agreement.pair_seed(b, pa, CTX, 2, 1) and len(seed) == 32
    assert seed != agreement.pair_seed(a, pb, Context("digest-a", 4), 1, 2)  # another round
    assert seed != agreement.pair_seed(a, pb, Context("digest-b", 3), 1, 2)  # another run
    assert seed != agreement.pair_seed(a, pb, CTX, 1, 3)  # another pair of ids
    with pytest.raises(SecureAggregationError, match="itself"):
        agreement.pair_seed(a, pa, CTX, 1, 1)


def test_channel_keys_are_per_ordered_pair():
    a, b, pa, pb = _pair()
    forward = agreement.channel_key(a, pb, CTX, 1, 2)
    assert forward == agreement.channel_key(b, pa, CTX, 1, 2)
    assert forward != agreement.channel_key(a, pb, CTX, 2, 1)
    assert forward != agreement.pair_seed(a, pb, CTX, 1, 2)  # mask seeds and channel keys never coincide


def test_sealed_shares_open_and_tampering_is_named():
    a, b, pa, pb = _pair()
    key = agreement.channel_key(a, pb, CTX, 1, 2)
    blob = agreement.seal(key, b"share" * 13, CTX, 1, 2)
    assert agreement.open_sealed(key, blob, CTX, 1, 2) == b"share" * 13
    assert blob != agreement.seal(key, b"share" * 13, CTX, 1, 2)  # a fresh nonce each time
    flipped = blob[:20] + bytes([blob[20] ^ 1]) + blob[21:]
    with pytest.raises(SecureAggregationError, match="round 3: the shares from client 1 to client 2 fail authentication"):
        agreement.open_sealed(key, flipped, CTX, 1, 2)
    with pytest.raises(SecureAggregationError, match="fail authentication"):  # replayed into another round
        agreement.open_sealed(key, blob, Context("digest-a", 4), 1, 2)
    with pytest.raises(SecureAggregationError, match="fail authentication"):  # re-addressed to another client
        agreement.open_sealed(key, blob, CTX, 1, 3)
    with pytest.raises(SecureAggregationError, match="truncated"):
        agreement.open_sealed(key, blob[:20], CTX, 1, 2)


def test_bad_public_keys_refused():
    a, _, _, _ = _pair()
    with pytest.raises(SecureAggregationError, match="low-order point"):
        agreement.pair_seed(a, bytes(32), CTX, 1, 2)
    with pytest.raises(SecureAggregationError, match="client 2 .* 32 bytes"):
        agreement.pair_seed(a, bytes(31), CTX, 1, 2)
