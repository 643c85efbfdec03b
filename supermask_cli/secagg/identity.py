"""Optional identity keys: each client signs its round keys with a long-term Ed25519 key whose
public half its peers registered beforehand, so an aggregator (or storage operator) that swaps a
client's published keys for its own is caught by every peer. Without them the protocol trusts the
run directory to deliver each client's keys unchanged (README, "Secure aggregation").

Keys are PEM files (``openssl genpkey -algorithm ed25519``; public: ``openssl pkey -pubout``);
the registered public key of client i is ``<dir>/client_III.pem``.
"""

from __future__ import annotations

import struct
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import SecureAggregationError
from .agreement import Context


def signed_bytes(ctx: Context, client: int, num_examples: int, channel_public: bytes, mask_public: bytes) -> bytes:
    return ctx.info("identity", client) + struct.pack(">Q", num_examples) + channel_public + mask_public


def load_private(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SecureAggregationError(f"identity key '{path}': not a readable unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SecureAggregationError(f"identity key '{path}': not an Ed25519 key")
    return key


def registered(directory: str | Path, client: int) -> Ed25519PublicKey:
    path = Path(directory) / f"client_{client:03d}.pem"
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SecureAggregationError(f"client {client}'s registered identity '{path}': not a readable PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SecureAggregationError(f"client {client}'s registered identity '{path}': not an Ed25519 key")
    return key


def verify(public: Ed25519PublicKey, signature: bytes, data: bytes, *, what: str) -> None:
    if not signature:
        raise SecureAggregationError(f"{what}: unsigned, but identities are registered")
    try:
        public.verify(signature, data)
    except InvalidSignature:
        raise SecureAggregationError(f"{what}: the signature does not verify with the registered identity (keys substituted?)") from None
