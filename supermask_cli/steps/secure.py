"""Secure aggregation through files (DESIGN §9), a client's side: the steps ``keys``, ``shares``
and ``unmask`` and the masked upload (the server's side: :mod:`.unmasking`).

Public messages live under ``<run_dir>/round_RRR/secagg/`` (:class:`..layout.Layout`); each client's
private keys, self-mask seed and reveal record live in its :class:`..secagg.keystore.KeyStore`
(``--secrets``; default ``~/.supermask/secagg/<run id>/client-<i>``), never under ``<run_dir>``.
Every step derives its state from those two places and can be re-run: a message already written
is left as it is (and must equal what the step would write). Share indices are the positions in
the round's sampled participants (+1), so clients that see different sets of keys still agree.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import checkpoint, storage
from ..checkpoint import SecureUpload
from ..config import Config, config_digest
from ..errors import SecureAggregationError
from ..layout import Layout
from ..rules import example_weights
from ..secagg import agreement, identity, masking, messages, packing, recovery, sharing, upload
from ..secagg.agreement import Context
from ..secagg.keystore import KeyStore
from .checks import latest_round
from .participants import sampled
from .pool import client_examples, resolved

SECRETS_ROOT = Path("~/.supermask/secagg")
MAX_MESSAGE_BYTES = 64 << 20
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class SecureRound:
    layout: Layout
    ctx: Context
    participants: list[int]
    threshold: int
    cfg: Config  # resolved with the run's labels and pool, as init recorded them
    meta: checkpoint.FileMeta  # the round's global

    @property
    def rnd(self) -> int:
        return self.ctx.round

    def index(self, client: int) -> int:
        return self.participants.index(client) + 1


def open_secure_round(cfg: Config, rnd: int | None) -> SecureRound:
    """Round ``rnd`` (default: the latest with a global) with its context, participants and t."""
    if not cfg.secure_aggregation.enabled:
        raise SecureAggregationError("secure_aggregation.enabled is false in this config")
    layout = Layout(cfg.run_dir)
    rnd = latest_round(layout) if rnd is None else rnd
    meta = checkpoint.read_meta(layout.global_path(rnd))
    cfg = resolved(cfg, meta.labels, meta.pool)
    if config_digest(cfg) != meta.config_digest:
        raise SecureAggregationError(f"{layout.global_path(rnd)}: written under another config (config digest differs)")
    participants = sorted(sampled(cfg, rnd))
    t = cfg.secure_aggregation.threshold or sharing.default_threshold(len(participants))
    sharing.check_threshold(t, len(participants))
    return SecureRound(layout, Context(meta.config_digest, rnd), participants, t, cfg, meta)


def keystore(sr: SecureRound, client: int, secrets: str | os.PathLike | None = None) -> KeyStore:
    """The client's secrets directory (default: one per run — config digest and run_dir — and
    client under ``SECRETS_ROOT``), refused when inside the run directory."""
    if secrets is None:
        run_id = hashlib.sha256(f"{sr.ctx.run_digest}\0{sr.cfg.run_dir}".encode()).hexdigest()[:16]
        secrets = SECRETS_ROOT / run_id / f"client-{client}"
    store = KeyStore(secrets)
    store.check_outside(sr.cfg.run_dir)
    return store


def _member(sr: SecureRound, client: int) -> None:
    if client not in sr.participants:
        raise SecureAggregationError(f"round {sr.rnd}: client {client} is not a participant (participants: {sr.participants})")


def read_message(path: str, message: str, sr: SecureRound, client: int | None = None) -> dict:
    data = storage.read_bytes(path, MAX_MESSAGE_BYTES, what=f"secure-aggregation {message} file")
    return messages.loads(data, message, where=f"'{path}'", rnd=sr.rnd, config_digest=sr.ctx.run_digest, client=client)


def publish_once(path: str, blob: bytes) -> str:
    """Write a message once; re-running a step must produce the same bytes."""
    if storage.exists(path):
        if storage.read_bytes(path, MAX_MESSAGE_BYTES) != blob:
            raise SecureAggregationError(f"'{path}' already holds another message than this step writes now")
        return path
    storage.write_atomic(path, blob)
    return path


def _state(store: KeyStore, sr: SecureRound, client: int) -> dict:
    state = store.read(sr.rnd)
    if state is None:
        raise SecureAggregationError(f"round {sr.rnd}: client {client} has no keys in '{store.dir}'; run `supermask secagg keys` first")
    if state.get("config_digest") != sr.ctx.run_digest or state.get("client") != client:
        raise SecureAggregationError(f"'{store.path(sr.rnd)}' belongs to another run or client")
    return state


def publish_keys(cfg: Config, client: int, rnd: int | None = None, secrets: str | None = None,
                 identity_key: str | None = None, identities: str | None = None) -> str:
    """``secagg keys``: this round's two fresh public keys (private keys and self-mask seed kept),
    signed with ``identity_key`` (Ed25519 PEM) if given. ``identities``: the directory of the peers'
    registered identity public keys; recorded with the secrets, so that every later step of this
    client refuses peer keys that are unsigned or not signed by the registered identity."""
    sr = open_secure_round(cfg, rnd)
    _member(sr, client)
    store = keystore(sr, client, secrets)
    path = sr.layout.secagg_path(sr.rnd, "keys", client)
    if store.read(sr.rnd) is None:
        if storage.exists(path):
            raise SecureAggregationError(f"'{path}' was published from another secrets directory than '{store.dir}'; pass its --secrets")
        store.write(sr.rnd, {"client": client, "config_digest": sr.ctx.run_digest, "channel_private": agreement.new_private_key().hex(),
                             "mask_private": agreement.new_private_key().hex(), "self_seed": os.urandom(32).hex(),
                             "masked": False, "revealed": {},
                             "identities": str(Path(identities).resolve()) if identities else None})
    state = _state(store, sr, client)
    if state["masked"] and not storage.exists(path):
        raise SecureAggregationError(f"round {sr.rnd}: client {client}'s keys in '{store.dir}' already masked an input whose "
                                     "messages are gone; reusing them would leak it: delete that directory's round file to start afresh")
    num_examples = len(client_examples(sr.cfg, client, sr.meta.labels, sr.meta.pool))
    channel = agreement.public_key(bytes.fromhex(state["channel_private"]))
    mask = agreement.public_key(bytes.fromhex(state["mask_private"]))
    signature = b""
    if identity_key:  # Ed25519 signatures are deterministic: a re-run writes the same bytes
        signature = identity.load_private(identity_key).sign(identity.signed_bytes(sr.ctx, client, num_examples, channel, mask))
    blob = messages.dumps("keys", sr.rnd, sr.ctx.run_digest, client=client, num_examples=num_examples,
                          channel_public=channel.hex(), mask_public=mask.hex(), signature=signature.hex())
    return publish_once(path, blob)


def public_keys(sr: SecureRound, identities: str | None = None) -> dict[int, dict]:
    """Participant -> its parsed keys message, for every participant whose keys are in; with
    ``identities`` (a directory of registered Ed25519 public keys) each must carry a valid signature."""
    files = sr.layout.secagg_files(sr.rnd, "keys")
    out = {c: read_message(p, "keys", sr, c) for c, p in sorted(files.items()) if c in sr.participants}
    if identities:
        for c, msg in out.items():
            data = identity.signed_bytes(sr.ctx, c, msg["num_examples"], msg["channel_public"], msg["mask_public"])
            identity.verify(identity.registered(identities, c), msg["signature"], data, what=f"'{files[c]}'")
    return out


def weights(sr: SecureRound, keys: dict[int, dict]) -> dict[int, int]:
    """Every key publisher's integer weight (``federation.weighting`` over the example counts in
    the keys messages: under secure aggregation ``bounded`` caps at 3× the median count of the
    clients that published keys, which a client must know before it masks; the plaintext rule
    uses the accepted uploads' median, the same when no one drops out), divided by their gcd."""
    clients = sorted(keys)
    counts = [keys[c]["num_examples"] for c in clients]
    for c, n in zip(clients, counts):
        if not 1 <= n <= sr.cfg.federation.max_client_examples:
            raise SecureAggregationError(f"round {sr.rnd}: client {c} claims {n} examples, outside 1..{sr.cfg.federation.max_client_examples}")
    weighting = "uniform" if sr.cfg.privacy.mode == "client" else sr.cfg.federation.weighting  # client-level DP weighs equally
    ints = [upload.integer_weight(w, c) for c, w in zip(clients, example_weights(counts, weighting).tolist())]
    # ÷ their gcd: the same weighted means (the same rationals, each correctly rounded) with a smaller
    # k, e.g. equal counts weigh 1 each: 2 bits per weight for 2 clients instead of bits(Σ counts)
    common = math.gcd(*ints)
    return {c: w // common for c, w in zip(clients, ints)}


def share_keys(cfg: Config, client: int, rnd: int | None = None, secrets: str | None = None, wait: float = 0.0) -> str:
    """``secagg shares``: once every participant's keys are in (or ``wait`` seconds ran out), seal
    this client's shares of its self-mask seed and mask key for every participant with keys."""
    sr = open_secure_round(cfg, rnd)
    _member(sr, client)
    state = _state(keystore(sr, client, secrets), sr, client)
    path = sr.layout.secagg_path(sr.rnd, "shares", client)
    if storage.exists(path):
        return path
    deadline = time.monotonic() + wait
    while len(sr.layout.secagg_files(sr.rnd, "keys").keys() & set(sr.participants)) < len(sr.participants) and time.monotonic() < deadline:
        time.sleep(min(POLL_SECONDS, max(deadline - time.monotonic(), 0)))
    keys = public_keys(sr, state.get("identities"))
    if client not in keys:
        raise SecureAggregationError(f"round {sr.rnd}: client {client}'s keys are not published; run `supermask secagg keys` first")
    if len(keys) < sr.threshold:
        missing = ", ".join(str(c) for c in sr.participants if c not in keys)
        raise SecureAggregationError(f"round {sr.rnd}: keys of {len(keys)} of {len(sr.participants)} participants are in, "
                                     f"fewer than the threshold {sr.threshold}; missing clients {missing}")
    n = len(sr.participants)
    self_shares = sharing.split(bytes.fromhex(state["self_seed"]), sr.threshold, n)
    pair_shares = sharing.split(bytes.fromhex(state["mask_private"]), sr.threshold, n)
    holders = {}
    for holder, msg in keys.items():
        k = sr.index(holder) - 1
        key = agreement.channel_key(bytes.fromhex(state["channel_private"]), msg["channel_public"], sr.ctx, client, holder)
        holders[str(holder)] = {
            "sealed": agreement.seal(key, self_shares[k] + pair_shares[k], sr.ctx, client, holder).hex(),
            "self_digest": sharing.share_digest(sr.ctx, "self", client, holder, self_shares[k]),
            "pair_digest": sharing.share_digest(sr.ctx, "pair", client, holder, pair_shares[k]),
        }
    return publish_once(path, messages.dumps("shares", sr.rnd, sr.ctx.run_digest, client=client, threshold=sr.threshold, holders=holders))


def shares_messages(sr: SecureRound) -> dict[int, dict]:
    files = sr.layout.secagg_files(sr.rnd, "shares")
    out = {c: read_message(p, "shares", sr, c) for c, p in sorted(files.items()) if c in sr.participants}
    for owner, msg in out.items():
        if msg["threshold"] != sr.threshold:
            raise SecureAggregationError(f"'{files[owner]}': threshold {msg['threshold']}, but this round's is {sr.threshold}")
    return out


def holdings(sr: SecureRound, client: int, state: dict) -> dict[int, dict[str, bytes]]:
    """Owner -> the two shares it sealed for ``client``, opened and checked against its digests."""
    keys, out = public_keys(sr, state.get("identities")), {}
    for owner, msg in shares_messages(sr).items():
        if client not in msg["holders"] or owner not in keys:
            continue
        entry = msg["holders"][client]
        key = agreement.channel_key(bytes.fromhex(state["channel_private"]), keys[owner]["channel_public"], sr.ctx, owner, client)
        plain = agreement.open_sealed(key, entry["sealed"], sr.ctx, owner, client)
        if len(plain) != 2 * sharing.SHARE_BYTES:
            raise SecureAggregationError(f"round {sr.rnd}: the shares from client {owner} to client {client} are {len(plain)} bytes")
        got = {"self": plain[:sharing.SHARE_BYTES], "pair": plain[sharing.SHARE_BYTES:]}
        for part, share in got.items():
            if sharing.share_digest(sr.ctx, part, owner, client, share) != entry[f"{part}_digest"].hex():
                raise SecureAggregationError(f"round {sr.rnd}: the {part} share client {owner} sealed for client {client} "
                                             "does not match the digest it published")
        out[owner] = got
    return out


def mask_peers(sr: SecureRound, client: int, shares: dict[int, dict] | None = None) -> list[int]:
    """The peers ``client`` masks with: those whose shares it holds and who hold its shares (a
    peer whose keys came after this client sealed its shares is left out, on both sides)."""
    shares = shares_messages(sr) if shares is None else shares
    if client not in shares:
        raise SecureAggregationError(f"round {sr.rnd}: client {client} has not sealed its shares; run `supermask secagg shares` first")
    return sorted(j for j, msg in shares.items() if j != client and client in msg["holders"] and j in shares[client]["holders"])


def mask_input(cfg: Config, client: int, x: dict[str, np.ndarray], bits: dict[str, int], rnd: int | None = None,
               secrets: str | None = None) -> tuple[dict[str, np.ndarray], list[int]]:
    """The masked input y (and the peers it is masked with, to record in the upload). The keys are
    marked used before y exists, so that they are never published again for another input."""
    sr = open_secure_round(cfg, rnd)
    store = keystore(sr, client, secrets)
    return _mask(sr, store, _state(store, sr, client), client, x, bits)


def _mask(sr: SecureRound, store: KeyStore, state: dict, client: int, x: dict[str, np.ndarray],
          bits: dict[str, int]) -> tuple[dict[str, np.ndarray], list[int]]:
    peers = mask_peers(sr, client)
    keys = public_keys(sr, state.get("identities"))
    seeds = {j: agreement.pair_seed(bytes.fromhex(state["mask_private"]), keys[j]["mask_public"], sr.ctx, client, j) for j in peers}
    if not state["masked"]:
        store.write(sr.rnd, {**state, "masked": True})
    return masking.mask(x, bits, client, bytes.fromhex(state["self_seed"]), seeds), peers


def weight_set(sr: SecureRound, client: int, shares: dict[int, dict]) -> list[int]:
    """The clients whose counts set ``client``'s weight and k: those it sealed shares for (whose
    keys were in when it did), the same for everyone when ``shares --wait`` saw every key."""
    return sorted(shares[client]["holders"])


def masked_upload(cfg: Config, client: int, tensors: dict[str, torch.Tensor], rnd: int | None = None,
                  secrets: str | None = None) -> tuple[dict[str, torch.Tensor], SecureUpload]:
    """``train-client`` with secure aggregation: the upload tensors encoded (weight × mask,
    weight × fixed point), masked, and packed in k bits per value, with the record the server checks."""
    sr = open_secure_round(cfg, rnd)
    store = keystore(sr, client, secrets)
    state = _state(store, sr, client)
    shares = shares_messages(sr)
    if client not in shares:
        raise SecureAggregationError(f"round {sr.rnd}: client {client} has not sealed its shares; run `supermask secagg shares` first")
    keys = public_keys(sr, state.get("identities"))
    w = weights(sr, {c: keys[c] for c in weight_set(sr, client, shares)})
    total = sum(w.values())
    bits = upload.segment_bits(sorted(tensors), total)
    y, peers = _mask(sr, store, state, client, upload.encode(tensors, w[client], bits), bits)
    stored = {f"masked/{k}": torch.from_numpy(packing.pack(v, bits[k])) for k, v in y.items()}
    return stored, SecureUpload(weight=w[client], total_weight=total, bits=bits, peers=peers)


def read_survivors(sr: SecureRound) -> dict:
    path = sr.layout.survivors_path(sr.rnd)
    if not storage.exists(path):
        raise SecureAggregationError(f"round {sr.rnd}: no survivor list yet ('{path}'); `supermask aggregate` writes it once the masked uploads are in")
    msg = read_message(path, "survivors", sr)
    if msg["participants"] != sr.participants or msg["threshold"] != sr.threshold:
        raise SecureAggregationError(f"'{path}': participants or threshold differ from this round's")
    return msg


def reveal(cfg: Config, client: int, rnd: int | None = None, secrets: str | None = None) -> str:
    """``secagg unmask``: this client's answer to the survivor list — one kind of share per peer.
    What it reveals is recorded in its secrets before the answer is published."""
    sr = open_secure_round(cfg, rnd)
    store = keystore(sr, client, secrets)
    state = _state(store, sr, client)
    listed = read_survivors(sr)
    revealed = {int(k): v for k, v in state["revealed"].items()}
    answer, revealed = recovery.answer(sr.ctx, client, sr.threshold, holdings(sr, client, state),
                                       set(listed["survivors"]), set(listed["dropped"]), revealed)
    store.write(sr.rnd, {**state, "revealed": {str(k): v for k, v in sorted(revealed.items())}})
    blob = messages.dumps("unmask", sr.rnd, sr.ctx.run_digest, client=client,
                          self=messages.hexmap(answer["self"]), pair=messages.hexmap(answer["pair"]))
    return publish_once(sr.layout.secagg_path(sr.rnd, "unmask", client), blob)
