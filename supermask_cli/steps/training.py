"""``train-client``: train one client's mask and head from a global and write its upload."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import __version__, checkpoint, storage
from ..checkpoint import Checkpoint, FileMeta
from ..config import Config
from ..errors import SupermaskError
from ..local_training import (
    DEFAULT_LR,
    TrainSettings,
    planned_steps,
    train_masks,
    use_dropout,
)
from ..mask.kinds import kind_of
from ..masked_model import trainable_from_global, upload_tensors
from ..data import Examples
from ..privacy import client_level
from ..secagg import upload as secagg_upload
from ..privacy.dpsgd import ExamplePrivacy
from ..privacy.policy import ClientPolicy
from ..runtime import resolve_device
from .checks import check_base_matches, derive_seed, load_base, open_round, refuse_existing
from .participants import sampled, write_participants
from . import secure
from .pool import client_examples
from .release import Release, open_release

# Training draws from derive_seed(run seed, round, client); the upload from the same parts plus
# UPLOAD_STREAM, so its draws never repeat the first training step's (same probs, same stream).
UPLOAD_STREAM = 1

AUTO_ENCODINGS = ("packed", "coded", "sparse")
CODED_MIN_SAVING = 0.05
"""``auto`` picks ``coded`` only when it is more than this fraction smaller than ``sparse``:
sparse masks decode tens of times faster on the server."""


@dataclass
class ClientResult:
    path: str
    round: int
    client: int
    num_examples: int
    steps: int
    mean_loss: float
    final_loss: float
    seconds: float
    examples_per_s: float
    bytes: int
    bits_per_weight: float
    density: float
    encoding: str
    replayed: bool = False  # the same upload as an earlier request's, from the client's ledger (nothing new released)


def preferred_encoding(bits: dict[str, int]) -> str:
    """The encoding with the fewest payload bits, ``coded`` only if it beats ``sparse`` by CODED_MIN_SAVING."""
    if "sparse" in bits and bits.get("coded", math.inf) >= (1 - CODED_MIN_SAVING) * bits["sparse"]:
        bits = {e: b for e, b in bits.items() if e != "coded"}
    return min(bits, key=bits.__getitem__)


def choose_encoding(
    meta: FileMeta, tensors: dict[str, torch.Tensor], gl: Checkpoint, requested: str
) -> tuple[FileMeta, dict[str, torch.Tensor]]:
    """Encode the upload as ``requested``; ``auto`` tries AUTO_ENCODINGS and keeps the `preferred_encoding` one."""
    spec = kind_of(meta.kind)
    if not spec.binary:  # float vectors: one encoding
        meta = meta.model_copy(update={"encoding": spec.upload_encodings[0]})
        stored = checkpoint.encode_tensors(meta, tensors, gl)
        return meta.model_copy(update={"mask_bits": checkpoint.payload_bits(stored)}), stored
    if spec.coded_with_flip_rate:
        flips = sum(int((tensors[f"mask/{n}"] != gl.tensors[f"{spec.global_group}/{n}"]).sum()) for n in meta.targets)
        meta = meta.model_copy(update={"coding_flip_rate": flips / meta.num_weights})
    candidates: dict[str, tuple[FileMeta, dict[str, torch.Tensor]]] = {}
    for encoding in AUTO_ENCODINGS if requested == "auto" else (requested,):
        candidate = meta.model_copy(update={"encoding": encoding})
        if encoding != "coded":
            candidate = candidate.model_copy(update={"coding_flip_rate": None})
        stored = checkpoint.encode_tensors(candidate, tensors, gl)
        candidates[encoding] = (candidate.model_copy(update={"mask_bits": checkpoint.payload_bits(stored)}), stored)
    return candidates[preferred_encoding({e: c[0].mask_bits for e, c in candidates.items()})]


def train_settings(cfg: Config, seed: int) -> TrainSettings:
    """The local training loop's settings from the config's ``train`` section."""
    return TrainSettings(
        batch_size=cfg.train.batch_size,
        micro_batch_size=cfg.train.micro_batch_size,
        max_steps=cfg.train.max_steps,
        epochs=cfg.train.epochs,
        lr=cfg.train.lr or DEFAULT_LR[cfg.mask.kind],
        head_lr=cfg.train.head_lr,
        warmup_ratio=cfg.train.warmup_ratio,
        schedule=cfg.train.schedule,
        head_weight_decay=cfg.train.head_weight_decay,
        max_grad_norm=cfg.train.max_grad_norm,
        max_length=cfg.model.max_length,
        seed=seed,
        dropout=use_dropout(cfg.train.dropout, cfg.mask.kind),
        compile=cfg.train.compile,
        logit_adjust=cfg.train.logit_adjust,
    )


def train_client(
    cfg: Config,
    client: int,
    *,
    rnd: int | None = None,
    global_path: str | None = None,
    out: str | None = None,
    force: bool = False,
    policy: ClientPolicy | None = None,
    secrets: str | None = None,
) -> ClientResult:
    """Train client ``client`` from a global file and write its upload; with the client's privacy
    ``policy``, only a release that policy allows (``steps.release``). With secure aggregation the
    upload is masked (``steps.secure``; ``secrets``: the client's secrets directory)."""
    layout, gl, cfg = open_round(cfg, rnd, global_path)
    rnd = gl.meta.round
    if not 0 <= client < cfg.federation.num_clients:
        raise SupermaskError(
            f"client {client} does not exist: federation.num_clients={cfg.federation.num_clients} "
            f"allows 0..{cfg.federation.num_clients - 1}"
        )
    chosen = sampled(cfg, rnd)
    if client not in chosen:
        raise SupermaskError(
            f"client {client} is not sampled for round {rnd} (participants: {chosen}; "
            "federation.clients_per_round draws them from the seed and round)"
        )
    path = out or layout.client_path(rnd, client)
    refuse_existing(path, force)
    if global_path is None:
        write_participants(layout, cfg, rnd)  # the round's record, should its writer have been killed
    examples = client_examples(cfg, client, gl.meta.labels, gl.meta.pool)
    settings = train_settings(cfg, derive_seed(cfg.seed, rnd, client))
    steps = planned_steps(len(examples), settings.batch_size, settings.max_steps, settings.epochs)
    with open_release(cfg, layout, client, rnd, gl.digest, examples, policy) as release:
        if release.replay is not None:
            assert release.replayed is not None
            storage.write_atomic(path, release.replay, force=force)
            return ClientResult(path=path, round=rnd, client=client, replayed=True, **release.replayed.numbers)
        dp = release.example_settings(len(examples), settings.batch_size, steps)
        release.check(dp, steps)  # refused here, before training, if the policy does not allow it
        return _train_and_write(cfg, gl, client, rnd, path, force, examples, settings, steps, release, dp, secrets)


def _train_and_write(
    cfg: Config, gl: Checkpoint, client: int, rnd: int, path: str, force: bool, examples: Examples,
    settings: TrainSettings, steps: int, release: Release, dp: ExamplePrivacy | None, secrets: str | None = None,
) -> ClientResult:
    base = load_base(cfg, gl.meta.labels)
    check_base_matches(base, gl)
    device = resolve_device(cfg.train.device)
    base.model.to(device)
    layers, head_params = trainable_from_global(base, gl, tau=cfg.mask.threshold, init_score=cfg.mask.init_score)
    stats = train_masks(
        base.model, layers, head_params, base.tokenizer, examples, settings, device, cfg.train.precision,
        description=f"round {rnd} client {client}", privacy=dp,
    )
    assert stats.steps == steps  # what the release was checked for
    named_head = {n: p for n, p in base.model.named_parameters() if n in gl.meta.head}
    upload_rng = torch.Generator().manual_seed(derive_seed(cfg.seed, rnd, client, UPLOAD_STREAM))
    tensors = upload_tensors(layers, named_head, cfg.mask.kind, upload_rng)
    if cfg.privacy.mode == "client":
        priority = client_level.flip_priority(cfg.mask.kind, layers, gl.tensors)
        tensors = client_level.bound_upload(cfg.mask.kind, tensors, gl.tensors, priority, cfg.privacy.max_flips)
    meta = gl.meta.model_copy(
        update={
            "role": "client",
            "client": client,
            "num_examples": len(examples),
            "parent_digest": gl.digest,
            "aggregation": None,
            "server_state": [],
            "privacy": release.file_record(dp, stats.steps),
            "created_by": f"supermask {__version__}",
        }
    )
    if cfg.secure_aggregation.enabled:
        if cfg.privacy.mode == "client":  # the server sees only sums: this client clips its own float update
            floats = sum(v.numel() for k, v in tensors.items() if not k.startswith("mask/"))
            tensors = client_level.clip_upload(cfg.mask.kind, tensors, gl.tensors,
                                               cfg.privacy.client_clip - secagg_upload.rounding_margin(floats))
        stored, record = secure.masked_upload(cfg, client, tensors, rnd=rnd, secrets=secrets)
        meta = meta.model_copy(update={"encoding": "masked", "coding_flip_rate": None, "secure_aggregation": record,
                                       "mask_bits": checkpoint.payload_bits(stored)})
    else:
        meta, stored = choose_encoding(meta, tensors, gl, cfg.mask.encoding)
    data_bytes = checkpoint.serialize(meta, stored)
    masks = [v for k, v in tensors.items() if k.startswith("mask/")]
    kept = sum(int(m.sum()) for m in masks)
    result = ClientResult(
        path=path,
        round=rnd,
        client=client,
        num_examples=len(examples),
        steps=stats.steps,
        mean_loss=stats.mean_loss,
        final_loss=stats.final_loss,
        seconds=stats.seconds,
        examples_per_s=stats.examples / max(stats.seconds, 1e-9),
        bytes=len(data_bytes),
        bits_per_weight=meta.bits_per_weight,
        density=kept / meta.num_weights if masks else 1.0,
        encoding=meta.encoding,
    )
    numbers = {k: v for k, v in vars(result).items() if k not in ("path", "round", "client", "replayed")}
    release.record(data_bytes, meta.privacy, numbers)  # the client's ledger first: a crash after it replays
    storage.write_atomic(path, data_bytes, force=force)
    return result
