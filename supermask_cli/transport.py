"""The global as a compact delta from the previous one: what a client holding round R's global
fetches to obtain round R+1's.

A delta carries the uploads the server accepted (already entropy-coded against global R), the
new global's head and its metadata (which names the aggregation rule and the accepted clients in
order). The receiver decodes the uploads against its global R, reduces them with the server's own
reducer (``reducer.next_global_tensors``), and re-encodes: the result is byte-identical to the server's file, which
the delta's SHA-256 confirms. Everything needed is in a run directory (global R, global R+1 and
round R's client files), so a launcher or a bucket reader can build deltas without the server.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import checkpoint, storage
from .checkpoint import Checkpoint
from .config import Config
from .errors import CheckpointError
from .layout import Layout
from .reducer import next_global_tensors

DELTA_KEY = "supermask-delta"
DELTA_VERSION = 1
PAYLOAD_GROUPS = ("mask", "code", "scale")  # what a client upload contributes besides its head


def _client_prefix(index: int) -> str:
    return f"client{index:04d}/"


def _meta_text(header: dict) -> str:
    return header["__metadata__"][checkpoint.META_KEY]


def encode_delta(new_global: bytes, client_files: list[bytes], *, path: str = "global") -> bytes:
    """The delta from ``new_global``'s parent to ``new_global``: its accepted uploads (found among
    ``client_files`` by digest) without their heads, the new head, and the new metadata."""
    header, _ = checkpoint.parse_header(new_global, path)
    meta = checkpoint.parse_meta(header, path)
    if meta.role != "global" or meta.aggregation is None or meta.parent_digest is None:
        raise CheckpointError(f"{path}: not an aggregated global (round 0 has no delta; fetch the full file)")
    by_digest = {checkpoint.file_digest(data): data for data in client_files}
    tensors = {k: v for k, v in st_load(new_global).items() if k.startswith("head/")}
    client_metas = []
    for index, record in enumerate(meta.aggregation.clients):
        data = by_digest.get(record.digest)
        if data is None:
            raise CheckpointError(f"{path}: client {record.client}'s accepted upload is not among the given files")
        client_header, _ = checkpoint.parse_header(data, f"client {record.client}")
        client_metas.append(_meta_text(client_header))
        for key, value in st_load(data).items():
            if key.partition("/")[0] in PAYLOAD_GROUPS:
                tensors[_client_prefix(index) + key] = value
    info = {
        "version": DELTA_VERSION,
        "parent": meta.parent_digest,
        "digest": checkpoint.file_digest(new_global),
        "global": _meta_text(header),
        "clients": client_metas,
    }
    ordered = {k: tensors[k] for k in sorted(tensors)}
    return st_save(ordered, metadata={DELTA_KEY: json.dumps(info, sort_keys=True, separators=(",", ":"))})


def apply_delta(cfg: Config, previous: Checkpoint, delta: bytes, *, path: str = "delta") -> bytes:
    """The bytes of the next global, rebuilt from ``previous`` (the receiver's global) and a delta;
    raises CheckpointError when the delta is for another global or does not rebuild exactly."""
    header, _ = checkpoint.parse_header(delta, path)
    raw = header.get("__metadata__", {}).get(DELTA_KEY) if isinstance(header.get("__metadata__"), dict) else None
    if raw is None:
        raise CheckpointError(f"{path}: not a supermask delta (no '{DELTA_KEY}' metadata)")
    info = json.loads(raw)
    if info.get("version") != DELTA_VERSION:
        raise CheckpointError(f"{path}: delta version {info.get('version')}; this supermask reads {DELTA_VERSION}")
    if info["parent"] != previous.digest:
        raise CheckpointError(f"{path}: a delta from another global (parent digest differs); fetch the full file")
    meta = checkpoint.parse_meta({"__metadata__": {checkpoint.META_KEY: info["global"]}}, path)
    assert meta.aggregation is not None
    stored = st_load(delta)
    decoded = []
    for index, text in enumerate(info["clients"]):
        client_meta = checkpoint.parse_meta({"__metadata__": {checkpoint.META_KEY: text}}, path)
        prefix = _client_prefix(index)
        payload = {k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix)}
        decoded.append(checkpoint.decode_stored(client_meta, payload, previous, f"{path} (client {client_meta.client})"))
    counts = [r.num_examples for r in meta.aggregation.clients]
    tensors = next_global_tensors(decoded.__getitem__, counts, previous.tensors, meta.kind, cfg,
                                  rule=meta.aggregation.rule, rnd=meta.round - 1)
    tensors.update({k: v for k, v in stored.items() if k.startswith("head/")})
    data = checkpoint.serialize(meta, checkpoint.encode_tensors(meta, tensors, None))
    if checkpoint.file_digest(data) != info["digest"]:
        raise CheckpointError(f"{path}: the rebuilt global does not match the server's digest; fetch the full file")
    return data


def receive(cfg: Config, held: str, received: bytes, *, is_delta: bool, digest: str) -> bytes | None:
    """The next global from what a client received: ``received`` itself, or rebuilt from the global
    file it holds at ``held`` when ``is_delta``. None when a delta cannot be used (no or another
    held global, or it does not rebuild): the client must fetch the full file. The result always
    has the server's ``digest``."""
    data = received
    if is_delta:
        if not os.path.exists(held):
            return None
        try:
            data = apply_delta(cfg, checkpoint.load_checkpoint(held), received)
        except CheckpointError:
            return None
    if checkpoint.file_digest(data) != digest:
        raise CheckpointError("the global received differs from the server's (SHA-256); fetch it again")
    return data


# ------------------------------------------------------------------------------------ run directory


@dataclass(frozen=True)
class Download:
    """What a client fetches for round ``round``'s global: the delta when it is smaller than the
    full file and the round has a parent, else the full file."""

    round: int
    data: bytes
    is_delta: bool
    full_bytes: int
    num_weights: int

    @property
    def bits_per_weight(self) -> float:
        return len(self.data) * 8 / max(self.num_weights, 1)


# Deltas already rebuilt here, by everything that decides their bytes: a launcher that evaluates a
# round (``download_metrics``) and then sends the round's global pays for the rebuild once.
_VERIFIED: dict[tuple, bytes] = {}
_VERIFIED_MAX = 4


def download(cfg: Config, layout: Layout, rnd: int) -> Download:
    """Round ``rnd``'s download for a client holding round ``rnd - 1``'s global, from run-dir files.

    The delta is offered only after rebuilding the global from it here, exactly as a client
    would: a global that is not a deterministic function of its parent and the uploads (noise
    added by the server, a rule this module does not replay) travels as the full file. The check
    is remembered per process, keyed by the digests of every file it read and the federation
    settings, so the same files are never rebuilt twice and changed files always are."""
    full = storage.read_bytes(layout.global_path(rnd), checkpoint.MAX_FILE_BYTES, what="checkpoint")
    header, _ = checkpoint.parse_header(full, layout.global_path(rnd))
    meta = checkpoint.parse_meta(header, layout.global_path(rnd))
    result = Download(round=rnd, data=full, is_delta=False, full_bytes=len(full), num_weights=meta.num_weights)
    if rnd == 0 or meta.aggregation is None:
        return result
    clients = []
    for record in meta.aggregation.clients:
        client_path = layout.client_path(rnd - 1, record.client)
        if not storage.exists(client_path):
            return result
        clients.append(storage.read_bytes(client_path, checkpoint.MAX_FILE_BYTES, what="checkpoint"))
    previous_path = layout.global_path(rnd - 1)
    previous_bytes = storage.read_bytes(previous_path, checkpoint.MAX_FILE_BYTES, what="checkpoint")
    key = (
        checkpoint.file_digest(full),
        checkpoint.file_digest(previous_bytes),
        tuple(checkpoint.file_digest(c) for c in clients),
        cfg.federation.model_dump_json(),
    )
    if key in _VERIFIED:
        return Download(round=rnd, data=_VERIFIED[key], is_delta=True, full_bytes=len(full), num_weights=meta.num_weights)
    try:
        delta = encode_delta(full, clients, path=layout.global_path(rnd))
    except CheckpointError:
        return result  # an upload was replaced or removed since aggregation: only the full file is exact
    if len(delta) >= len(full):
        return result
    try:
        apply_delta(cfg, checkpoint.loads(previous_bytes, previous_path), delta, path=layout.global_path(rnd))
    except CheckpointError:
        return result
    while len(_VERIFIED) >= _VERIFIED_MAX:
        del _VERIFIED[next(iter(_VERIFIED))]
    _VERIFIED[key] = delta
    return Download(round=rnd, data=delta, is_delta=True, full_bytes=len(full), num_weights=meta.num_weights)


def download_metrics(cfg: Config, layout: Layout, rnd: int) -> dict[str, float | int]:
    """``download_bytes`` and ``download_bits_per_weight`` of round ``rnd`` for ``metrics.json``."""
    d = download(cfg, layout, rnd)
    return {"download_bytes": len(d.data), "download_bits_per_weight": d.bits_per_weight}
