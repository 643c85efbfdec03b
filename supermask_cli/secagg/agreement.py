"""Key agreement and sealed channels: X25519 per round, HKDF-SHA256, ChaCha20-Poly1305.

Every derived key is bound to its context — the run's config digest, the round and the client
ids — through HKDF's ``info``, so a key of one run, round or pair is useless in another:

- the pairwise mask seed s_ij = HKDF(X25519(s_i, s_j), info = "mask" | digest | round | min | max),
  the same for i and j;
- the channel key from i to j = HKDF(X25519(c_i, c_j), info = "channel" | digest | round | i | j),
  one per *ordered* pair, so i→j and j→i never share a key.

A sealed message is a random 12-byte nonce followed by the ChaCha20-Poly1305 ciphertext; the
associated data (not secret, authenticated) names the same context.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import SecureAggregationError

KEY_BYTES = 32
NONCE_BYTES = 12
_DOMAIN = b"supermask-secagg-v1\0"
_RAW = {"encoding": serialization.Encoding.Raw}


@dataclass(frozen=True)
class Context:
    """What every key and message of one round is bound to."""

    run_digest: str
    round: int

    def info(self, purpose: str, *ids: int) -> bytes:
        digest = self.run_digest.encode()
        return b"".join([_DOMAIN, purpose.encode(), b"\0", struct.pack(">I", len(digest)), digest,
                         struct.pack(f">I{len(ids)}I", self.round, *ids)])


def new_private_key() -> bytes:
    """A fresh X25519 private key, raw 32 bytes (from the OS's CSPRNG)."""
    return X25519PrivateKey.generate().private_bytes(**_RAW, format=serialization.PrivateFormat.Raw,
                                                     encryption_algorithm=serialization.NoEncryption())


def _private(raw: bytes, what: str) -> X25519PrivateKey:
    if len(raw) != KEY_BYTES:
        raise SecureAggregationError(f"{what}: an X25519 private key must be {KEY_BYTES} bytes, got {len(raw)}")
    return X25519PrivateKey.from_private_bytes(raw)


def public_key(private: bytes, what: str = "private key") -> bytes:
    return _private(private, what).public_key().public_bytes(**_RAW, format=serialization.PublicFormat.Raw)


def _shared(private: bytes, peer_public: bytes, what: str) -> bytes:
    if len(peer_public) != KEY_BYTES:
        raise SecureAggregationError(f"{what}: an X25519 public key must be {KEY_BYTES} bytes, got {len(peer_public)}")
    try:
        return _private(private, what).exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:  # a low-order point: the shared secret would be all zeros
        raise SecureAggregationError(f"{what}: the public key is a low-order point, refused") from None


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def pair_seed(private: bytes, peer_public: bytes, ctx: Context, me: int, peer: int) -> bytes:
    """s_ij, the pairwise mask seed that ``me`` and ``peer`` both derive."""
    if me == peer:
        raise SecureAggregationError(f"round {ctx.round}: client {me} has no pairwise mask with itself")
    secret = _shared(private, peer_public, f"round {ctx.round}: mask key of client {peer} (for client {me})")
    return _hkdf(secret, ctx.info("mask", min(me, peer), max(me, peer)))


def channel_key(private: bytes, peer_public: bytes, ctx: Context, sender: int, recipient: int) -> bytes:
    """The AEAD key for messages from ``sender`` to ``recipient`` (either side can derive it)."""
    secret = _shared(private, peer_public, f"round {ctx.round}: channel key between clients {sender} and {recipient}")
    return _hkdf(secret, ctx.info("channel", sender, recipient))


def seal(key: bytes, plaintext: bytes, ctx: Context, sender: int, recipient: int) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, ctx.info("sealed", sender, recipient))


def open_sealed(key: bytes, blob: bytes, ctx: Context, sender: int, recipient: int) -> bytes:
    """The plaintext of ``blob``; a one-line error naming both clients if it was altered or misaddressed."""
    what = f"round {ctx.round}: the shares from client {sender} to client {recipient}"
    if len(blob) < NONCE_BYTES + 16:
        raise SecureAggregationError(f"{what} are truncated ({len(blob)} bytes)")
    try:
        return ChaCha20Poly1305(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], ctx.info("sealed", sender, recipient))
    except InvalidTag:
        raise SecureAggregationError(f"{what} fail authentication (tampered, or sealed for another run, round or pair)") from None
