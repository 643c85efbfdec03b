"""t-of-n Shamir secret sharing of 32-byte secrets with pycryptodome.

``Crypto.Protocol.SecretSharing.Shamir`` shares 16-byte secrets over GF(2^128) (the AES-GCM
field) at indices 1..n; a 32-byte secret is shared as two independent halves at the same
indices, so a share is 32 bytes too. Shamir itself cannot tell a wrong share from a right one
(a wrong share silently gives a wrong secret), so the owner publishes :func:`share_digest` of
every share it hands out and the server checks each revealed share against it
(:mod:`.recovery`) before combining.

``Shamir.combine`` recomputes the Lagrange coefficients (t inversions, t² products, bit-serial
in Python) for every secret; a round's server combines 2·(|S| + |D|) secrets from the same
holders, so :func:`combine` computes the coefficients once per set of share indices with the
library's own field element and then takes t products per secret (the same arithmetic as
``Shamir.combine`` without its ``ssss`` option, checked against it by the tests).
"""

from __future__ import annotations

import functools
import hashlib
import struct

from Crypto.Protocol.SecretSharing import Shamir

try:  # the library's GF(2^128) element, the one Shamir.combine computes with
    from Crypto.Protocol.SecretSharing import _Element
except ImportError:  # pragma: no cover - a pycryptodome without it: Shamir.combine for every secret
    _Element = None

from ..errors import SecureAggregationError
from .agreement import Context

SECRET_BYTES = 32
SHARE_BYTES = 32
_HALF = 16
KINDS = ("self", "pair")
"""What is shared: ``self`` = the self-mask seed b_i, ``pair`` = the private key of s_i."""


def default_threshold(n: int) -> int:
    """t when ``secure_aggregation.threshold`` is null: a strict majority of the n participants
    (at least 2), so that two disjoint groups can never both reach it."""
    return max(2, n // 2 + 1)


def check_threshold(t: int, n: int) -> None:
    if not 2 <= t <= n:
        raise SecureAggregationError(f"secure_aggregation.threshold {t}: must be between 2 and the {n} participants")


def split(secret: bytes, t: int, n: int) -> list[bytes]:
    """Shares of ``secret`` for indices 1..n (the returned list's position + 1); any t rebuild it."""
    if len(secret) != SECRET_BYTES:
        raise SecureAggregationError(f"secure aggregation: a shared secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    check_threshold(t, n)
    low, high = (Shamir.split(t, n, secret[k:k + _HALF]) for k in (0, _HALF))
    for (i, _), (j, _) in zip(low, high):
        assert i == j
    return [a + b for (_, a), (_, b) in zip(low, high)]


def share_digest(ctx: Context, kind: str, owner: int, holder: int, share: bytes) -> str:
    """The public commitment to one share: SHA-256 over the context, the kind, both ids and the share."""
    if kind not in KINDS:
        raise ValueError(kind)
    return hashlib.sha256(ctx.info(f"share-{kind}", owner, holder) + struct.pack(">I", len(share)) + share).hexdigest()


def combine(shares: dict[int, bytes], t: int, *, what: str) -> bytes:
    """The secret from at least ``t`` shares keyed by index (1-based); exactly t of them are used
    (pycryptodome wants exactly t). ``what`` names the secret in errors."""
    if len(shares) < t:
        raise SecureAggregationError(f"{what}: {len(shares)} shares, {t} needed")
    chosen = sorted(shares)[:t]
    for index in chosen:
        if len(shares[index]) != SHARE_BYTES:
            raise SecureAggregationError(f"{what}: the share at index {index} is {len(shares[index])} bytes, not {SHARE_BYTES}")
    return b"".join(_interpolate(tuple(chosen), [shares[i][k:k + _HALF] for i in chosen]) for k in (0, _HALF))


@functools.lru_cache(maxsize=256)
def _lagrange_at_zero(indices: tuple[int, ...]) -> tuple:
    """l_j(0) = Π_{m≠j} x_m / (x_j − x_m) in GF(2^128) (where − is +)."""
    xs = [_Element(i) for i in indices]
    out = []
    for j, xj in enumerate(xs):
        num, den = _Element(1), _Element(1)
        for m, xm in enumerate(xs):
            if m != j:
                num *= xm
                den *= xj + xm
        out.append(num * den.inverse())
    return tuple(out)


def _interpolate(indices: tuple[int, ...], values: list[bytes]) -> bytes:
    if _Element is None:  # pragma: no cover
        return Shamir.combine(list(zip(indices, values)))
    acc = _Element(0)
    for coefficient, value in zip(_lagrange_at_zero(indices), values):
        acc += coefficient * _Element(value)
    return acc.encode()
