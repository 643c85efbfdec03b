"""Secure aggregation through files, the server's side: the survivor list, what it still waits
for, and the survivors' sum with every mask removed (the clients' side: :mod:`.secure`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import storage
from ..checkpoint import Checkpoint, ClientRecord, FileMeta, plaintext_shapes
from ..config import Config
from ..errors import CheckpointError, SecureAggregationError
from ..reducer import next_global_masked
from ..secagg import masking, messages, recovery, sharing
from .secure import SecureRound, publish_once, read_message, open_secure_round, public_keys, read_survivors, shares_messages, weights


def survivors(cfg: Config, uploads: dict[int, list[int]], rnd: int | None = None) -> tuple[list[int], list[int]]:
    """The round's survivors and the dropped clients whose mask keys are needed, from the masked
    uploads in (client -> the peers it masked with): written to ``survivors.json`` once; an
    existing list is final (uploads that came later are not in the sum). Survivors are uploads
    whose peers all sealed shares and agree pairwise (a disagreeing pair loses its higher id)."""
    sr = open_secure_round(cfg, rnd)
    path = sr.layout.survivors_path(sr.rnd)
    if storage.exists(path):
        listed = read_survivors(sr)
        return listed["survivors"], listed["dropped"]
    shared = set(shares_messages(sr))
    alive = {i for i, peers in uploads.items() if i in shared and set(peers) <= shared - {i}}
    changed = True
    while changed:
        changed = False
        for i in sorted(alive):
            bad = [j for j in sorted(alive - {i}) if (j in uploads[i]) != (i in uploads[j])]
            if bad:
                alive.discard(max(i, bad[0]))
                changed = True
                break
    dropped = sorted({j for i in alive for j in uploads[i]} - alive)
    if len(alive) < sr.threshold:
        missing = ", ".join(str(c) for c in sr.participants if c not in alive)
        raise SecureAggregationError(f"round {sr.rnd}: {len(alive)} of {len(sr.participants)} participants survived, fewer than "
                                     f"the threshold {sr.threshold}; cannot unmask; missing clients {missing}")
    blob = messages.dumps("survivors", sr.rnd, sr.ctx.run_digest, threshold=sr.threshold, participants=sr.participants,
                          survivors=sorted(alive), dropped=dropped)
    publish_once(path, blob)
    return sorted(alive), dropped


def check_uploads(sr: SecureRound, metas: dict[int, tuple[str, FileMeta]], survivors: list[int]) -> tuple[dict[str, int], int]:
    """Every survivor's upload record against the keys and shares messages: its weight and total
    recomputed from the counts it was weighted against, one k per tensor for all. Returns (k per
    tensor, the survivors' total weight)."""
    keys, shares = public_keys(sr), shares_messages(sr)
    bits, total = None, 0
    for c in survivors:
        path, meta = metas[c]
        record = meta.secure_aggregation
        w = weights(sr, {h: keys[h] for h in sorted(shares[c]["holders"])})
        if (record.weight, record.total_weight) != (w[c], sum(w.values())):
            raise SecureAggregationError(f"{path}: weight {record.weight} of total {record.total_weight}, but the published counts "
                                         f"give {w[c]} of {sum(w.values())}")
        if bits is not None and record.bits != bits:
            raise SecureAggregationError(f"{path}: its word sizes differ from client {survivors[0]}'s (they saw different keys)")
        bits = record.bits
        total += record.weight
    assert bits is not None
    return bits, total


def unmask_answers(sr: SecureRound) -> dict[int, dict]:
    """Survivor -> its parsed unmask answer, for the answers in so far."""
    listed = read_survivors(sr)
    files = sr.layout.secagg_files(sr.rnd, "unmask")
    return {c: read_message(p, "unmask", sr, c) for c, p in sorted(files.items()) if c in listed["survivors"]}


def unmask_sum(cfg: Config, total: dict[str, np.ndarray], bits: dict[str, int], rnd: int | None = None,
               identities: str | None = None) -> dict[str, np.ndarray]:
    """Server: Σ x over the survivors from Σ y (the survivors' masked uploads, added mod 2^k)."""
    sr = open_secure_round(cfg, rnd)
    listed = read_survivors(sr)
    shares = shares_messages(sr)
    digests = {(part, owner, holder): entry[f"{part}_digest"].hex()
               for owner, msg in shares.items() for holder, entry in msg["holders"].items() for part in sharing.KINDS}
    mask_public = {c: msg["mask_public"] for c, msg in public_keys(sr, identities).items()}
    answers = {c: {"self": a["self"], "pair": a["pair"]} for c, a in unmask_answers(sr).items()}
    self_seeds, pairs = recovery.recover(sr.ctx, sr.threshold, sr.participants, set(listed["survivors"]), set(listed["dropped"]),
                                         answers, digests, mask_public)
    return masking.unmask(total, bits, self_seeds, pairs)


def waiting_for(cfg: Config, rnd: int | None = None) -> str | None:
    """What the server still waits for before it can unmask round ``rnd`` (None: nothing)."""
    sr = open_secure_round(cfg, rnd)
    if not storage.exists(sr.layout.survivors_path(sr.rnd)):
        return f"round {sr.rnd}: the survivor list is not written yet"
    listed, answers = read_survivors(sr), unmask_answers(sr)
    if len(answers) >= sr.threshold:
        return None
    pending = ", ".join(str(c) for c in listed["survivors"] if c not in answers)
    return (f"round {sr.rnd}: {len(answers)} of the {sr.threshold} unmask answers needed are in; "
            f"waiting for `supermask secagg unmask` of clients {pending}")


@dataclass
class MaskedOutcome:
    """What ``aggregate`` gets from a secure-aggregation round: the next global's tensors and the
    survivors' records, or (``waiting``) what is still missing before the round can be unmasked."""

    survivors: list[int]
    tensors: dict[str, torch.Tensor] | None = None
    records: list[ClientRecord] = field(default_factory=list)
    waiting: str | None = None


def reduce_masked(cfg: Config, gl: Checkpoint, metas: list[tuple[str, FileMeta]], rule: str,
                  load: Callable[[str], Checkpoint | None]) -> MaskedOutcome:
    """The masked uploads ``metas`` (metadata already checked; ``load(path)``: the checked file, or
    None if it was dropped as invalid) -> the survivor list (written once, after every upload was
    checked: a survivor can no longer be dropped), then, once t unmask answers are in, the next
    global (``reducer.next_global_masked``)."""
    rnd = gl.meta.round
    plain = [p for p, m in metas if m.secure_aggregation is None]
    if plain:
        raise CheckpointError(f"{plain[0]}: a plaintext upload in a secure-aggregation round")
    sr = open_secure_round(cfg, rnd)
    by_client = {m.client: (p, m) for p, m in metas}
    if not storage.exists(sr.layout.survivors_path(rnd)):
        by_client = {c: (p, m) for c, (p, m) in by_client.items() if load(p) is not None}
    alive, _ = survivors(cfg, {c: m.secure_aggregation.peers for c, (_, m) in by_client.items()}, rnd)
    absent = [c for c in alive if c not in by_client]
    if absent:
        raise SecureAggregationError(f"round {rnd}: the upload of survivor {absent[0]} is gone; the survivor list needs every survivor's")
    waiting = waiting_for(cfg, rnd)
    if waiting:
        return MaskedOutcome(survivors=alive, waiting=waiting)
    bits, total = check_uploads(sr, by_client, alive)
    records: list[ClientRecord] = []

    def load_survivor(i: int) -> dict[str, torch.Tensor]:
        path, meta = by_client[alive[i]]
        ckpt = load(path)
        if ckpt is None:
            raise SecureAggregationError(f"{path}: survivor {alive[i]}'s upload became invalid after the survivor list")
        records.append(ClientRecord(client=alive[i], num_examples=meta.num_examples, digest=ckpt.digest, bytes=ckpt.size,
                                    mask_bits=ckpt.meta.mask_bits))
        return ckpt.tensors

    tensors = next_global_masked(load_survivor, len(alive), gl.tensors, gl.meta.kind, cfg, bits=bits, total_weight=total,
                                 shapes=plaintext_shapes(gl.meta), unmask=lambda t: unmask_sum(cfg, t, bits, rnd), rule=rule, rnd=rnd)
    return MaskedOutcome(survivors=alive, tensors=tensors, records=records)
