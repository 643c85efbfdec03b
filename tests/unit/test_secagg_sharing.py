"""t-of-n Shamir sharing of 32-byte secrets (pycryptodome, two 16-byte halves)."""

from __future__ import annotations

import itertools
import os

import pytest

from supermask_cli.errors import SecureAggregationError
from supermask_cli.secagg import sharing
from supermask_cli.secagg.agreement import Context


def test_any_t_of_n_shares_rebuild_the_secret_and_t_minus_1_do_not():
    secret = os.urandom(32)
    shares = sharing.split(secret, 3, 5)
    assert len(shares) == 5 and all(len(s) == 32 for s in shares)
    for subset in itertools.combinations(range(5), 3):
        assert sharing.combine({k + 1: shares[k] for k in subset}, 3, what="s") == secret
    with pytest.raises(SecureAggregationError, match="s: 2 shares, 3 needed"):
        sharing.combine({1: shares[0], 2: shares[1]}, 3, what="s")
    # t - 1 shares passed as if they were enough give another secret, not this one (both halves)
    wrong = sharing.combine({1: shares[0], 2: shares[1]}, 2, what="s")
    assert wrong[:16] != secret[:16] and wrong[16:] != secret[16:]


def test_more_than_t_shares_use_t_of_them():
    secret = os.urandom(32)
    shares = sharing.split(secret, 2, 4)
    assert sharing.combine({k + 1: s for k, s in enumerate(shares)}, 2, what="s") == secret


@pytest.mark.parametrize("t,n", [(1, 5), (6, 5), (0, 1)])
def test_threshold_outside_2_to_n_refused(t, n):
    with pytest.raises(SecureAggregationError, match="threshold"):
        sharing.split(os.urandom(32), t, n)


def test_share_digest_binds_kind_ids_and_context():
    ctx, share = Context("d", 1), os.urandom(32)
    d = sharing.share_digest(ctx, "self", 1, 2, share)
    assert d != sharing.share_digest(ctx, "pair", 1, 2, share)
    assert d != sharing.share_digest(ctx, "self", 2, 1, share)
    assert d != sharing.share_digest(Context("d", 2), "self", 1, 2, share)
    assert d != sharing.share_digest(ctx, "self", 1, 2, bytes([share[0] ^ 1]) + share[1:])


def test_combine_agrees_with_the_librarys_own_combine():
    # Prepare: 16-byte halves shared by pycryptodome itself
    from Crypto.Protocol.SecretSharing import Shamir

    for t, n, subset in [(2, 3, (2, 3)), (4, 9, (1, 4, 7, 9)), (5, 5, (1, 2, 3, 4, 5))]:
        secret = os.urandom(16)
        shares = Shamir.split(t, n, secret)
        chosen = [shares[i - 1] for i in subset]
        # Execute: our interpolation (cached coefficients) and the library's
        ours = sharing._interpolate(tuple(subset), [s for _, s in chosen])
        # Assert
        assert ours == Shamir.combine(chosen) == secret
