"""``aggregate``: validate a round's uploads and reduce them into the next round's global."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import torch

from .. import __version__, checkpoint, storage
from ..checkpoint import (
    AggregationMeta,
    Checkpoint,
    ClientRecord,
    DroppedRecord,
    FileMeta,
)
from ..config import Config
from ..errors import CheckpointError, SupermaskError
from ..layout import Layout
from ..mask.kinds import kind_of
from ..privacy import client_level, ledger
from ..reducer import Rejected, next_global_tensors
from ..rules import outliers, surprise
from ..runlog import AggregateResult, aggregate_result, write_metrics_log
from .checks import check_client, open_round, refuse_existing
from . import admission, unmasking
from .participants import sampled, write_participants

T = TypeVar("T")


def _inbox(cfg: Config, layout: Layout, gl: Checkpoint, rnd: int, expected: list[int], wait: float | None) -> list[str]:
    """The round's admitted uploads (``admission.admit_round``: a file that fails a check moves to
    ``rejected/`` and the round goes on without it)."""
    admitted = admission.admit_round(cfg, layout, gl, rnd, expected, wait)
    if not admitted and not layout.rejected(rnd):
        raise SupermaskError(
            f"no client files for round {rnd} under '{layout.clients_dir(rnd)}'; run `supermask train-client` first"
        )
    return [admitted[c] for c in sorted(admitted)]


def _accept(path: str, dropped: list[DroppedRecord], skip_invalid: bool, check: Callable[[], T]) -> T | None:
    """``check()`` of one upload; a CheckpointError fails the round, or with ``skip_invalid``
    records the file as dropped (None)."""
    try:
        return check()
    except CheckpointError as exc:
        if not skip_invalid:
            raise
        dropped.append(DroppedRecord(file=path, reason=str(exc)))
        return None


def _load(path: str, gl: Checkpoint, cfg: Config) -> Checkpoint:
    ckpt = checkpoint.load_checkpoint(path, reference=gl, max_bytes=admission.upload_limit(gl, cfg))
    check_client(ckpt.meta, path, gl, cfg)
    return ckpt


def _screen_one(path: str, gl: Checkpoint, cfg: Config, expected: list[int], seen: dict[int, str]) -> FileMeta:
    meta = checkpoint.read_meta(path, max_bytes=admission.upload_limit(gl, cfg))
    check_client(meta, path, gl, cfg)
    if meta.client in seen:
        raise CheckpointError(f"{path}: client {meta.client} already uploaded {seen[meta.client]}")
    if meta.client not in expected:
        raise CheckpointError(f"{path}: client {meta.client} was not sampled for round {gl.meta.round} (participants: {expected})")
    return meta


def _screen(paths: list[str], gl: Checkpoint, cfg: Config, expected: list[int], dropped: list[DroppedRecord],
            skip_invalid: bool) -> list[tuple[str, FileMeta]]:
    """Metadata checks of every upload (one file per client, sampled clients only)."""
    metas: list[tuple[str, FileMeta]] = []
    seen: dict[int, str] = {}
    for p in paths:
        meta = _accept(p, dropped, skip_invalid, lambda: _screen_one(p, gl, cfg, expected, seen))
        if meta is None:
            continue
        assert meta.client is not None
        seen[meta.client] = p
        metas.append((p, meta))
    return metas


def _drop_outliers(
    metas: list[tuple[str, FileMeta]], gl: Checkpoint, cfg: Config, dropped: list[DroppedRecord], skip_invalid: bool
) -> list[tuple[str, FileMeta]]:
    """The ``filtered`` rule's first pass: score every upload against the global, drop outliers."""
    scored: list[tuple[str, FileMeta, float]] = []
    for p, meta in metas:
        ckpt = _accept(p, dropped, skip_invalid, lambda: _load(p, gl, cfg))
        if ckpt is not None:
            scored.append((p, meta, surprise(gl.meta.kind, ckpt.tensors, gl.tensors)))
    if not scored:
        return []
    scores = torch.tensor([s for _, _, s in scored])
    flags = outliers(scores, cfg.federation.filter_k).tolist()
    median = float(scores.median())
    for (p, _, score), flag in zip(scored, flags):
        if flag:
            dropped.append(DroppedRecord(file=p, reason=f"{p}: outlier upload (surprise {score:.4g}, median {median:.4g})"))
    return [(p, m) for (p, m, _), flag in zip(scored, flags) if not flag]


def _reduce(metas: list[tuple[str, FileMeta]], gl: Checkpoint, cfg: Config, rule: str,
            dropped: list[DroppedRecord], skip_invalid: bool) -> tuple[dict[str, torch.Tensor], list[ClientRecord]]:
    """Decode the uploads into the next global's tensors (``reducer``). A file dropped while
    decoding restarts the pass with the weights of the clients that remain."""
    while metas:
        records: list[ClientRecord] = []

        def load(i: int) -> dict[str, torch.Tensor]:
            p, meta = metas[i]
            ckpt = _accept(p, dropped, skip_invalid, lambda: _load(p, gl, cfg))
            if ckpt is None:
                raise Rejected(i, p)
            records.append(ClientRecord(client=meta.client or 0, num_examples=meta.num_examples, digest=ckpt.digest,
                                        bytes=ckpt.size, mask_bits=ckpt.meta.mask_bits))
            return ckpt.tensors

        counts = [m.num_examples for _, m in metas]
        try:
            tensors = next_global_tensors(load, counts, gl.tensors, gl.meta.kind, cfg, rule=rule, rnd=gl.meta.round)
        except Rejected as exc:
            metas = metas[: exc.index] + metas[exc.index + 1 :]
            continue
        return tensors, records
    return {}, []


def _rejected(layout: Layout, rnd: int, accepted: set[int]) -> list[DroppedRecord]:
    """The uploads a launcher refused before they entered ``clients/`` (``rejected/``, with their
    one-line reasons), for clients that have no accepted upload."""
    out = []
    for client, path in sorted(layout.rejected(rnd).items()):
        if client in accepted:
            continue
        try:
            reason = storage.read_bytes(path, 4096, what="reason").decode("utf-8", "replace").strip()
        except SupermaskError as exc:
            reason = str(exc)
        out.append(DroppedRecord(file=layout.rejected_path(rnd, client), reason=" ".join(reason.split())[:1000]))
    return out


def _require_min_clients(valid: int, rnd: int, cfg: Config, dropped: list[DroppedRecord], missing: list[int]) -> None:
    if valid >= cfg.federation.min_clients:
        return
    detail = f"; missing clients: {missing}" if missing else ""
    detail += f"; first dropped: {dropped[0].reason}" if dropped else ""
    raise SupermaskError(
        f"round {rnd}: only {valid} valid client file(s), federation.min_clients is {cfg.federation.min_clients}{detail}"
    )


def aggregate(
    cfg: Config,
    *,
    rnd: int | None = None,
    global_path: str | None = None,
    client_paths: list[str] | None = None,
    out: str | None = None,
    force: bool = False,
    skip_invalid: bool = False,
    rule: str | None = None,
    wait: float | None = None,
) -> AggregateResult:
    """Validate every upload of a round and aggregate them into the next round's global.

    Only the round's sampled clients (``participants.json``) may upload. ``wait``: first wait up to
    that many seconds for every sampled client's file; whoever is missing then is recorded in the
    new global, and fewer than ``federation.min_clients`` valid uploads fail the round.
    ``mean``, ``capped`` and ``filtered`` stream one client at a time; ``median`` and
    ``trimmed_mean`` hold every client in memory."""
    start = time.perf_counter()
    layout, gl, cfg = open_round(cfg, rnd, global_path)
    rnd = gl.meta.round
    rule = rule or cfg.federation.aggregator
    if rule == "bayes" and not kind_of(gl.meta.kind).probabilistic:
        raise SupermaskError(f"aggregator bayes needs bernoulli masks; this run's are {gl.meta.kind}")
    path = out or layout.global_path(rnd + 1)
    refuse_existing(path, force)
    expected = sampled(cfg, rnd)
    paths = client_paths or _inbox(cfg, layout, gl, rnd, expected, wait)
    skip_invalid = skip_invalid or not client_paths  # the inbox never fails a round on one client's file

    dropped: list[DroppedRecord] = []
    metas = _screen(paths, gl, cfg, expected, dropped, skip_invalid)
    missing = sorted(set(expected) - {m.client for _, m in metas if m.client is not None})
    _require_min_clients(len(metas), rnd, cfg, dropped or _rejected(layout, rnd, set()), missing)
    if cfg.secure_aggregation.enabled:  # the masked path (steps.unmasking, reducer.next_global_masked)
        outcome = unmasking.reduce_masked(cfg, gl, metas, rule, lambda p: _accept(p, dropped, skip_invalid, lambda: _load(p, gl, cfg)))
        missing = sorted(set(expected) - set(outcome.survivors))
        if outcome.waiting:
            return AggregateResult(path=path, round=rnd, rule=rule, clients=[], dropped=dropped, num_examples=0,
                                   density=float("nan"), upload_bytes=0, bits_per_weight=0.0,
                                   seconds=time.perf_counter() - start, missing=missing, waiting=outcome.waiting)
        tensors, records = outcome.tensors, outcome.records
    else:
        if rule == "filtered":
            metas = _drop_outliers(metas, gl, cfg, dropped, skip_invalid)
        tensors, records = _reduce(metas, gl, cfg, rule, dropped, skip_invalid)
    accepted = {r.client for r in records}
    dropped += _rejected(layout, rnd, accepted)
    _require_min_clients(len(records), rnd, cfg, dropped, missing)
    if cfg.privacy.mode == "client":  # un-noised uploads: publish who took part, nothing computed from them
        records = [client_level.public_record(r) for r in records]
    meta = gl.meta.model_copy(
        update={
            "round": rnd + 1,
            "num_examples": sum(r.num_examples for r in records),
            "parent_digest": gl.digest,
            "aggregation": AggregationMeta(rule=rule, clients=records, dropped=dropped, missing=missing),
            "server_state": checkpoint.state_groups(tensors),
            "privacy": ledger.run_record(cfg, rnd, gl.meta, [m for _, m in metas if m.client in accepted]),
            "created_by": f"supermask {__version__}",
        }
    )
    stored = checkpoint.encode_tensors(meta, tensors, None)
    meta = meta.model_copy(update={"mask_bits": checkpoint.payload_bits(stored)})
    checkpoint.save_checkpoint(path, meta, stored, force=force)
    if path == layout.global_path(rnd + 1):  # the next round's participants (every launcher rewrites them if lost)
        write_participants(layout, cfg, rnd + 1)
        write_metrics_log(layout)
    density = Checkpoint(meta=meta, tensors=tensors).density()
    return aggregate_result(path, meta, density, time.perf_counter() - start)
