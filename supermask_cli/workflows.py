"""One function per command: the only place that ties config, data, model, masks and files together."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from . import __version__, checkpoint, coding, data, server_opt, storage
from .aggregate import (
    STREAMING_RULES,
    RunningMean,
    capped_weights,
    finish,
    outliers,
    reduce_stacked,
    surprise,
)
from .checkpoint import AggregationMeta, BaseModelMeta, Checkpoint, ClientRecord, DroppedRecord, FileMeta, TargetMeta
from .config import Config, config_digest, config_from_dict, dump_config
from .errors import CheckpointError, SupermaskError
from .evaluate import evaluate_model
from .layout import Layout
from .mask.layer import out_features
from .masked_model import bake_global, trainable_from_global, upload_tensors
from .model import BaseModel, load_base_model
from .tasks import TaskSpec, get_task
from .tracking import TensorBoardLog, mlflow_for
from .train import DEFAULT_LR, TrainSettings, resolve_device, train_masks, use_dropout

# ----------------------------------------------------------------------------------- data builders


def task_spec(cfg: Config) -> TaskSpec | None:
    return get_task(cfg.task) if cfg.task else None


def text_fields(cfg: Config) -> list[str]:
    task = task_spec(cfg)
    if cfg.data.text_fields:
        return cfg.data.text_fields
    if task is None:
        raise SupermaskError("data.text_fields is required when no GLUE task is set (e.g. [text])")
    return list(task.text_fields)


def is_regression(cfg: Config) -> bool:
    task = task_spec(cfg)
    return task.is_regression if task else cfg.data.regression


def metric_names(cfg: Config) -> list[str]:
    """The task's metrics; custom data: Pearson/Spearman, binary F1 for two classes, else macro F1."""
    task = task_spec(cfg)
    if task:
        return list(task.metrics)
    if cfg.data.regression:
        return ["pearson", "spearman"]
    binary = cfg.data.label_names is not None and len(cfg.data.label_names) == 2
    return ["accuracy", "f1" if binary else "f1_macro"]


def use_hub(cfg: Config) -> bool:
    """``auto``: the hub when a GLUE task is set and the hub answers, else the local files."""
    if cfg.data.source == "local" or task_spec(cfg) is None:
        return False
    if cfg.data.source == "hub":
        return True
    return data.hub_available()


def _split_frame(cfg: Config, split: str):
    task = task_spec(cfg)
    if use_hub(cfg):
        assert task is not None
        return data.load_hub_split(task, task.train_split if split == "train" else task.eval_split), f"hub:{task.name}"
    key = "data.train_file" if split == "train" else "data.eval_file"
    path = cfg.data.train_file if split == "train" else cfg.data.eval_file
    if path is None:
        raise SupermaskError(f"{key} is not set and the hub is not used; give a local data file")
    return data.read_table(path, key=key), path


def load_examples(cfg: Config, split: str, label_names: list[str] | None, path: str | None = None) -> data.Examples:
    """Examples of ``split`` (``train`` or ``eval``), or of the file ``path`` when given."""
    if path is not None:
        frame, source = data.read_table(path, key="data.client_train_file"), path
    else:
        frame, source = _split_frame(cfg, split)
    return data.examples_from_frame(
        frame,
        text_fields=text_fields(cfg),
        label_field=cfg.data.label_field,
        label_names=label_names,
        regression=is_regression(cfg),
        source=source,
    )


def resolve_label_names(cfg: Config) -> list[str] | None:
    """Class names (None for regression): the task's, the config's, or inferred from the train file."""
    task = task_spec(cfg)
    if is_regression(cfg):
        return None
    if cfg.data.label_names:
        return list(cfg.data.label_names)
    if task is not None:
        return list(task.label_names or [])
    if cfg.data.train_file is None:
        raise SupermaskError("data.label_names is required when clients read their own files")
    frame = data.read_table(cfg.data.train_file, key="data.train_file")
    if cfg.data.label_field not in frame.columns:
        raise SupermaskError(f"data file '{cfg.data.train_file}' has no column '{cfg.data.label_field}' (data.label_field)")
    return data.infer_label_names(frame[cfg.data.label_field])


def resolved(cfg: Config, label_names: list[str] | None) -> Config:
    """The config with derivable values filled in (text fields, label names), as ``init`` records it."""
    data_cfg = cfg.data.model_copy(update={"label_names": label_names, "text_fields": text_fields(cfg)})
    return cfg.model_copy(update={"data": data_cfg})


def train_pool(cfg: Config, label_names: list[str] | None) -> data.Examples:
    """The capped training set that the partition splits among clients."""
    examples = load_examples(cfg, "train", label_names)
    return examples.subset(data.sample_indices(len(examples), cfg.data.max_train_examples, cfg.seed))


def client_examples(cfg: Config, client: int, label_names: list[str] | None) -> data.Examples:
    """Client ``client``'s data: its file from the template, or its share of the seeded partition."""
    fed = cfg.federation
    if not 0 <= client < fed.num_clients:
        raise SupermaskError(f"client {client} does not exist: federation.num_clients={fed.num_clients}")
    if cfg.data.client_train_file:
        path = cfg.data.client_train_file.format(client=client)
        examples = load_examples(cfg, "train", label_names, path=path)
        return examples.subset(data.sample_indices(len(examples), cfg.data.max_train_examples, cfg.seed))
    pool = train_pool(cfg, label_names)
    indices = data.client_indices(
        pool.labels,
        fed.num_clients,
        client,
        fed.partition,
        cfg.seed,
        alpha=fed.dirichlet_alpha,
        shards_per_client=fed.shards_per_client,
        regression=is_regression(cfg),
    )
    return pool.subset(indices)


def eval_examples(cfg: Config, label_names: list[str] | None) -> data.Examples:
    examples = load_examples(cfg, "eval", label_names)
    return examples.subset(data.sample_indices(len(examples), cfg.data.max_eval_examples, cfg.seed))


# ---------------------------------------------------------------------------------- model builders


def load_base(cfg: Config, label_names: list[str] | None) -> BaseModel:
    return load_base_model(
        cfg.model.name,
        revision=cfg.model.revision,
        num_labels=1 if label_names is None else len(label_names),
        regression=label_names is None,
        target_patterns=cfg.mask.target_modules,
        head_names=cfg.model.head_modules,
        seed=cfg.seed,
    )


def check_base_matches(base: BaseModel, ckpt: Checkpoint) -> None:
    """The loaded base model must be the one the checkpoint's masks were made for."""
    meta = ckpt.meta
    if sorted(meta.targets) != sorted(base.targets):
        raise CheckpointError(f"{ckpt.path}: its target modules differ from this config's (mask.target_modules)")
    if base.fingerprint() != meta.base_model.fingerprint:
        raise CheckpointError(
            f"{ckpt.path}: made for another base model (fingerprint differs from '{meta.base_model.name}' "
            "as loaded here); use the model and revision the run was initialised with"
        )


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, round, client)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


# ------------------------------------------------------------------------------------------ checks


def load_global(path: str) -> Checkpoint:
    ckpt = checkpoint.load_checkpoint(path)
    if ckpt.meta.role != "global":
        raise CheckpointError(f"{path}: is a client file, not a global file")
    return ckpt


def check_config(ckpt: Checkpoint, cfg: Config) -> None:
    if ckpt.meta.config_digest != config_digest(cfg):
        raise CheckpointError(
            f"{ckpt.path}: written under another config (config digest differs); use the run's config.yaml"
        )


def check_client(meta: FileMeta, path: str, gl: Checkpoint, cfg: Config) -> None:
    """A client file must belong to this run, round, global, base model and client range."""
    g = gl.meta
    if meta.role != "client":
        raise CheckpointError(f"{path}: is a global file, not a client upload")
    if meta.kind != g.kind:
        raise CheckpointError(f"{path}: mask kind {meta.kind!r}, but the global is {g.kind!r}")
    if meta.round != g.round:
        raise CheckpointError(f"{path}: trained in round {meta.round}, but this is round {g.round}")
    if meta.base_model.fingerprint != g.base_model.fingerprint:
        raise CheckpointError(f"{path}: trained against another base model (fingerprint differs)")
    if meta.parent_digest != gl.digest:
        raise CheckpointError(f"{path}: trained from another global file (parent digest differs)")
    if meta.config_digest != g.config_digest:
        raise CheckpointError(f"{path}: trained under another config (config digest differs)")
    if meta.targets != g.targets or meta.head != g.head or meta.labels != g.labels:
        raise CheckpointError(f"{path}: its target modules, head or labels differ from the global's")
    if meta.client is None or meta.client >= cfg.federation.num_clients:
        raise CheckpointError(f"{path}: client id {meta.client} is outside 0..{cfg.federation.num_clients - 1}")
    if not 1 <= meta.num_examples <= cfg.federation.max_client_examples:
        raise CheckpointError(
            f"{path}: num_examples {meta.num_examples} is outside 1..{cfg.federation.max_client_examples} "
            "(federation.max_client_examples)"
        )


# --------------------------------------------------------------------------------------------- init


@dataclass
class InitResult:
    path: str
    digest: str
    num_targets: int
    num_weights: int
    target_counts: dict[str, int]
    label_names: list[str] | None


def _write_config(layout: Layout, cfg: Config, force: bool) -> None:
    text = dump_config(cfg)
    if storage.exists(layout.config) and not force:
        existing = storage.read_bytes(layout.config, 1 << 20, what="config").decode()
        if existing == text:
            return
        raise SupermaskError(
            f"'{layout.config}' already holds a different config; use another run_dir or pass --force"
        )
    storage.write_text_atomic(layout.config, text, force=True)


def init(cfg: Config, *, out: str | None = None, force: bool = False) -> tuple[InitResult, Config]:
    """Write the resolved config and round 0's global: the pretrained model, masks keeping every weight."""
    layout = Layout(cfg.run_dir)
    path = out or layout.global_path(0)
    if storage.exists(path) and not force:
        raise SupermaskError(f"'{path}' already exists; pass --force to overwrite it, or `supermask run` to resume")
    labels = resolve_label_names(cfg)
    cfg = resolved(cfg, labels)
    base = load_base(cfg, labels)
    tensors: dict[str, torch.Tensor] = {f"head/{k}": v for k, v in base.head_state().items()}
    shapes = base.target_shapes()
    for name, shape in shapes.items():
        if cfg.mask.kind == "bernoulli":
            tensors[f"probs/{name}"] = torch.full(shape, cfg.mask.init_density, dtype=torch.float32)
        elif cfg.mask.kind == "threshold":
            tensors[f"mask/{name}"] = torch.ones(shape, dtype=torch.bool)
        else:
            tensors[f"scale/{name}"] = torch.ones(out_features(base.model.get_submodule(name)))
    meta = _file_meta(
        cfg, base, role="global", rnd=0, client=None, num_examples=0, parent=None,
        encoding="float" if cfg.mask.kind != "threshold" else "packed",
    )
    stored = checkpoint.encode_tensors(meta, tensors, None)
    meta = meta.model_copy(update={"mask_bits": checkpoint.payload_bits(stored)})
    if out is None:
        _write_config(layout, cfg, force)
    digest = checkpoint.save_checkpoint(path, meta, stored, force=force)
    result = InitResult(
        path=path,
        digest=digest,
        num_targets=len(shapes),
        num_weights=meta.num_weights,
        target_counts=base.target_counts,
        label_names=labels,
    )
    return result, cfg


def _file_meta(
    cfg: Config, base: BaseModel, *, role: str, rnd: int, client: int | None, num_examples: int,
    parent: str | None, encoding: str,
) -> FileMeta:
    head = {k: list(v.shape) for k, v in base.head_state().items()}
    return FileMeta(
        format=checkpoint.FORMAT_NAME,
        format_version=checkpoint.FORMAT_VERSION,
        kind=cfg.mask.kind,
        role=role,
        round=rnd,
        client=client,
        num_examples=num_examples,
        base_model=BaseModelMeta(name=cfg.model.name, revision=cfg.model.revision, fingerprint=base.fingerprint()),
        targets={
            n: TargetMeta(shape=s, out_features=out_features(base.model.get_submodule(n)))
            for n, s in base.target_shapes().items()
        },
        head=head,
        labels=cfg.data.label_names if not is_regression(cfg) else None,
        config_digest=config_digest(cfg),
        parent_digest=parent,
        encoding=encoding,
        mask_bits=0,
        created_by=f"supermask {__version__}",
    )


# ------------------------------------------------------------------------------------- train-client


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


def latest_round(layout: Layout) -> int:
    rnd = layout.latest_round()
    if rnd is None:
        raise SupermaskError(f"no global file under '{layout.run_dir}'; run `supermask init` first")
    return rnd


def refuse_existing(path: str, force: bool) -> None:
    """Fail early, before any work, when the output exists and ``--force`` was not given."""
    if storage.exists(path) and not force:
        raise SupermaskError(f"'{path}' already exists; pass --force to overwrite it")


def open_round(cfg: Config, rnd: int | None, global_path: str | None) -> tuple[Layout, Checkpoint, Config]:
    """The round's global (explicit path, round, or latest) checked against the config, and the
    config resolved with the run's labels."""
    layout = Layout(cfg.run_dir)
    if global_path is None:
        global_path = layout.global_path(latest_round(layout) if rnd is None else rnd)
    gl = load_global(global_path)
    cfg = resolved(cfg, gl.meta.labels)
    check_config(gl, cfg)
    return layout, gl, cfg


AUTO_ENCODINGS = ("packed", "coded", "sparse")
CODED_MIN_SAVING = 0.05
"""``auto`` picks ``coded`` only when it is more than this fraction smaller than ``sparse``:
sparse masks decode tens of times faster on the server."""


def _preferred(bits: dict[str, int]) -> str:
    """The encoding with the fewest payload bits, ``coded`` only if it beats ``sparse`` by CODED_MIN_SAVING."""
    if "sparse" in bits and bits.get("coded", math.inf) >= (1 - CODED_MIN_SAVING) * bits["sparse"]:
        bits = {e: b for e, b in bits.items() if e != "coded"}
    return min(bits, key=bits.__getitem__)


def _choose_encoding(
    meta: FileMeta, tensors: dict[str, torch.Tensor], gl: Checkpoint, requested: str
) -> tuple[FileMeta, dict[str, torch.Tensor]]:
    """Encode the upload as ``requested``; ``auto`` tries AUTO_ENCODINGS and keeps the `_preferred` one."""
    if meta.kind == "scaling":
        meta = meta.model_copy(update={"encoding": "float"})
        stored = checkpoint.encode_tensors(meta, tensors, gl)
        return meta.model_copy(update={"mask_bits": checkpoint.payload_bits(stored)}), stored
    if meta.kind == "threshold":
        flips = sum(int((tensors[f"mask/{n}"] != gl.tensors[f"mask/{n}"]).sum()) for n in meta.targets)
        meta = meta.model_copy(update={"coding_flip_rate": flips / meta.num_weights})
    candidates: dict[str, tuple[FileMeta, dict[str, torch.Tensor]]] = {}
    for encoding in AUTO_ENCODINGS if requested == "auto" else (requested,):
        candidate = meta.model_copy(update={"encoding": encoding})
        if encoding != "coded":
            candidate = candidate.model_copy(update={"coding_flip_rate": None})
        stored = checkpoint.encode_tensors(candidate, tensors, gl)
        candidates[encoding] = (candidate.model_copy(update={"mask_bits": checkpoint.payload_bits(stored)}), stored)
    return candidates[_preferred({e: c[0].mask_bits for e, c in candidates.items()})]


def train_client(
    cfg: Config,
    client: int,
    *,
    rnd: int | None = None,
    global_path: str | None = None,
    out: str | None = None,
    force: bool = False,
) -> ClientResult:
    """Train client ``client`` from a global file and write its upload."""
    layout, gl, cfg = open_round(cfg, rnd, global_path)
    rnd = gl.meta.round
    if not 0 <= client < cfg.federation.num_clients:
        raise SupermaskError(
            f"client {client} does not exist: federation.num_clients={cfg.federation.num_clients} "
            f"allows 0..{cfg.federation.num_clients - 1}"
        )
    path = out or layout.client_path(rnd, client)
    refuse_existing(path, force)
    examples = client_examples(cfg, client, gl.meta.labels)
    base = load_base(cfg, gl.meta.labels)
    check_base_matches(base, gl)
    device = resolve_device(cfg.train.device)
    base.model.to(device)
    layers, head_params = trainable_from_global(base, gl, tau=cfg.mask.threshold, init_score=cfg.mask.init_score)
    seed = derive_seed(cfg.seed, rnd, client)
    settings = TrainSettings(
        batch_size=cfg.train.batch_size,
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
    )
    stats = train_masks(
        base.model, layers, head_params, base.tokenizer, examples, settings, device, cfg.train.precision,
        description=f"round {rnd} client {client}",
    )
    named_head = {n: p for n, p in base.model.named_parameters() if n in gl.meta.head}
    tensors = upload_tensors(layers, named_head, cfg.mask.kind, torch.Generator().manual_seed(seed))
    meta = gl.meta.model_copy(
        update={
            "role": "client",
            "client": client,
            "num_examples": len(examples),
            "parent_digest": gl.digest,
            "aggregation": None,
            "server_state": [],
            "created_by": f"supermask {__version__}",
        }
    )
    meta, stored = _choose_encoding(meta, tensors, gl, cfg.mask.encoding)
    data_bytes = checkpoint.serialize(meta, stored)
    storage.write_atomic(path, data_bytes, force=force)
    masks = [v for k, v in tensors.items() if k.startswith("mask/")]
    kept = sum(int(m.sum()) for m in masks)
    return ClientResult(
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


# ---------------------------------------------------------------------------------------- aggregate


@dataclass
class AggregateResult:
    path: str
    round: int
    rule: str
    clients: list[ClientRecord]
    dropped: list[DroppedRecord]
    num_examples: int
    density: float
    upload_bytes: int
    bits_per_weight: float
    seconds: float


def _client_paths(layout: Layout, rnd: int, explicit: list[str] | None) -> list[str]:
    paths = explicit if explicit else layout.client_files(rnd)
    if not paths:
        raise SupermaskError(
            f"no client files for round {rnd} under '{layout.clients_dir(rnd)}'; run `supermask train-client` first"
        )
    return paths


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
) -> AggregateResult:
    """Validate every client upload of a round and aggregate them into the next round's global.

    ``mean`` and ``capped`` stream: one client is decoded at a time, so memory does not grow
    with the number of clients. ``median`` and ``trimmed_mean`` need every client at once."""
    start = time.perf_counter()
    layout, gl, cfg = open_round(cfg, rnd, global_path)
    rnd = gl.meta.round
    rule = rule or cfg.federation.aggregator
    path = out or layout.global_path(rnd + 1)
    refuse_existing(path, force)
    paths = _client_paths(layout, rnd, client_paths)

    dropped: list[DroppedRecord] = []
    metas: list[tuple[str, FileMeta]] = []
    seen: dict[int, str] = {}
    for p in paths:
        try:
            meta = checkpoint.read_meta(p)
            check_client(meta, p, gl, cfg)
            if meta.client in seen:
                raise CheckpointError(f"{p}: client {meta.client} already uploaded {seen[meta.client]}")
        except CheckpointError as exc:
            if not skip_invalid:
                raise
            dropped.append(DroppedRecord(file=p, reason=str(exc)))
            continue
        assert meta.client is not None
        seen[meta.client] = p
        metas.append((p, meta))

    if rule == "filtered" and metas:
        metas = _drop_outliers(metas, gl, cfg, dropped, skip_invalid)
    records: list[ClientRecord] = []
    accepted: list[tuple[dict[str, torch.Tensor], float]] = []
    running = RunningMean()
    weights = torch.tensor([float(m.num_examples) for _, m in metas], dtype=torch.float64)
    if rule == "capped" and len(metas):
        weights = capped_weights(weights, cfg.federation.max_client_share)
    for (p, meta), weight in zip(metas, weights.tolist()):
        try:
            ckpt = checkpoint.load_checkpoint(p, reference=gl)
            check_client(ckpt.meta, p, gl, cfg)
        except CheckpointError as exc:
            if not skip_invalid:
                raise
            dropped.append(DroppedRecord(file=p, reason=str(exc)))
            continue
        records.append(
            ClientRecord(
                client=meta.client or 0, num_examples=meta.num_examples, digest=ckpt.digest,
                bytes=ckpt.size, mask_bits=ckpt.meta.mask_bits,
            )
        )
        if rule in STREAMING_RULES:
            running.add(ckpt.tensors, weight)
        else:
            accepted.append((ckpt.tensors, weight))
        del ckpt
    if len(records) < cfg.federation.min_clients:
        raise SupermaskError(
            f"round {rnd}: only {len(records)} valid client file(s), federation.min_clients is "
            f"{cfg.federation.min_clients}" + (f"; first dropped: {dropped[0].reason}" if dropped else "")
        )
    if rule in STREAMING_RULES:
        reduced = running.result()
    else:
        reduced = reduce_stacked(
            [t for t, _ in accepted], [w for _, w in accepted], rule, trim_ratio=cfg.federation.trim_ratio
        )
    fed = cfg.federation
    if rule == "bayes" and gl.meta.kind != "bernoulli":
        raise SupermaskError(f"--aggregator bayes: needs bernoulli masks, this run's are {gl.meta.kind}")
    bayes = (len(records), fed.bayes_prior, rnd % fed.bayes_reset == 0) if rule == "bayes" else None
    tensors = finish(reduced, gl.tensors, gl.meta.kind, server=server_opt.from_config(fed), bayes=bayes)
    total = sum(r.num_examples for r in records)
    meta = gl.meta.model_copy(
        update={
            "round": rnd + 1,
            "num_examples": total,
            "parent_digest": gl.digest,
            "aggregation": AggregationMeta(rule=rule, clients=records, dropped=dropped),
            "server_state": checkpoint.state_groups(tensors),
            "created_by": f"supermask {__version__}",
        }
    )
    stored = checkpoint.encode_tensors(meta, tensors, None)
    meta = meta.model_copy(update={"mask_bits": checkpoint.payload_bits(stored)})
    checkpoint.save_checkpoint(path, meta, stored, force=force)
    if path == layout.global_path(rnd + 1):
        write_metrics_log(layout)
    return _aggregate_result(path, meta, Checkpoint(meta=meta, tensors=tensors).density(), time.perf_counter() - start)


def _drop_outliers(
    metas: list[tuple[str, FileMeta]], gl: Checkpoint, cfg: Config, dropped: list[DroppedRecord], skip_invalid: bool
) -> list[tuple[str, FileMeta]]:
    """The ``filtered`` rule's first pass: score every upload against the global, drop outliers."""
    scored: list[tuple[str, FileMeta, float]] = []
    for p, meta in metas:
        try:
            ckpt = checkpoint.load_checkpoint(p, reference=gl)
        except CheckpointError as exc:
            if not skip_invalid:
                raise
            dropped.append(DroppedRecord(file=p, reason=str(exc)))
            continue
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


def _aggregate_result(path: str, meta: FileMeta, density: float, seconds: float) -> AggregateResult:
    """Round statistics from an aggregated global's metadata."""
    agg = meta.aggregation
    assert agg is not None
    return AggregateResult(
        path=path,
        round=meta.round - 1,
        rule=agg.rule,
        clients=agg.clients,
        dropped=agg.dropped,
        num_examples=meta.num_examples,
        density=density,
        upload_bytes=sum(c.bytes for c in agg.clients),
        bits_per_weight=sum(c.mask_bits for c in agg.clients) / max(len(agg.clients), 1) / meta.num_weights,
        seconds=seconds,
    )


# --------------------------------------------------------------------------------------------- eval


def evaluate(
    cfg: Config,
    *,
    rnd: int | None = None,
    checkpoint_path: str | None = None,
    out: str | None = None,
    force: bool = False,
) -> tuple[dict[str, Any], str]:
    """Evaluate a global file on the eval data; writes ``metrics.json`` and returns (metrics, its path)."""
    layout = Layout(cfg.run_dir)
    if checkpoint_path is None:
        rnd = latest_round(layout) if rnd is None else rnd
        checkpoint_path = layout.global_path(rnd)
    gl = load_global(checkpoint_path)
    rnd = gl.meta.round
    cfg = resolved(cfg, gl.meta.labels)
    path = out or (layout.metrics_path(rnd) if checkpoint_path == layout.global_path(rnd) else None)
    if path is None:
        path = checkpoint_path.rsplit("/", 1)[0] + "/metrics.json" if "/" in checkpoint_path else "metrics.json"
    refuse_existing(path, force)
    examples = eval_examples(cfg, gl.meta.labels)
    base = load_base(cfg, gl.meta.labels)
    check_base_matches(base, gl)
    model = bake_global(base, gl, cfg.mask.eval, seed=derive_seed(cfg.seed, rnd, -1))
    device = resolve_device(cfg.train.device)
    model.to(device)
    start = time.perf_counter()
    scores = evaluate_model(
        model, base.tokenizer, examples, metric_names(cfg),
        batch_size=cfg.eval.batch_size, max_length=cfg.model.max_length, device=device,
        precision=cfg.train.precision, description=f"eval round {rnd}",
    )
    seconds = time.perf_counter() - start
    agg = gl.meta.aggregation
    metrics: dict[str, Any] = {
        "round": rnd,
        "num_examples": len(examples),
        **scores,
        "density": gl.density(),
        "kind": gl.meta.kind,
        "eval_mode": cfg.mask.eval if gl.meta.kind == "bernoulli" else "mask",
        "train_examples": gl.meta.num_examples,
        "clients": len(agg.clients) if agg else 0,
        "dropped": len(agg.dropped) if agg else 0,
        "eval_seconds": seconds,
        "eval_examples_per_s": len(examples) / max(seconds, 1e-9),
        "checkpoint": checkpoint_path,
        "checkpoint_digest": gl.digest,
    }
    storage.write_text_atomic(path, json.dumps(metrics, indent=2) + "\n", force=force)
    if path == layout.metrics_path(rnd):
        write_metrics_log(layout)
    return metrics, path


# ---------------------------------------------------------------------------------------------- run


@dataclass
class RoundSummary:
    round: int
    metrics: dict[str, Any]
    upload: AggregateResult | None = None
    wall_seconds: float = 0.0
    clients: list[ClientResult] = field(default_factory=list)

    def row(self, main_metric: str) -> dict[str, Any]:
        up = self.upload
        return {
            "round": self.round,
            main_metric: self.metrics.get(main_metric),
            "loss": self.metrics.get("loss"),
            "density": self.metrics.get("density"),
            "upload_bytes": up.upload_bytes if up else None,
            "bits_per_weight": up.bits_per_weight if up else None,
            "clients": len(up.clients) if up else None,
            "wall_s": self.wall_seconds,
        }


def round_rows(layout: Layout) -> list[dict[str, Any]]:
    """Every evaluated round's ``metrics.json`` plus the uploads that trained from that round's
    global (``upload_bytes``, ``bits_per_weight``, ``upload_clients``), once aggregated."""
    rows = []
    rounds = layout.rounds()
    for rnd in rounds:
        if not storage.exists(layout.metrics_path(rnd)):
            continue
        row = json.loads(storage.read_bytes(layout.metrics_path(rnd), 1 << 20, what="metrics"))
        upload = _upload_summary(layout, rnd) if rnd + 1 in rounds else None
        if upload is not None:
            row.update(upload_bytes=upload.upload_bytes, bits_per_weight=upload.bits_per_weight,
                       upload_clients=len(upload.clients))
        rows.append(row)
    return rows


def write_metrics_log(layout: Layout) -> list[dict[str, Any]]:
    """Rebuild ``metrics.jsonl`` from :func:`round_rows` (a derived file, rewritten whole)."""
    rows = round_rows(layout)
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    storage.write_text_atomic(layout.metrics_log, text, force=True)
    return rows


def _upload_summary(layout: Layout, rnd: int) -> AggregateResult | None:
    """Round ``rnd``'s upload statistics, read back from round ``rnd + 1``'s global metadata."""
    path = layout.global_path(rnd + 1)
    meta = checkpoint.read_meta(path)
    return _aggregate_result(path, meta, float("nan"), 0.0) if meta.aggregation else None


def run(
    cfg: Config,
    *,
    on_client: Callable[[ClientResult], None] | None = None,
    on_round: Callable[[RoundSummary], None] | None = None,
) -> list[RoundSummary]:
    """Every step of every round on this machine; steps whose output exists are skipped (resume)."""
    layout = Layout(cfg.run_dir)
    if not storage.exists(layout.global_path(0)):
        _, cfg = init(cfg)
    else:
        cfg = resolved(cfg, checkpoint.read_meta(layout.global_path(0)).labels)
    summaries: list[RoundSummary] = []
    board = TensorBoardLog(storage.join(cfg.run_dir, "tensorboard")) if cfg.tensorboard else None
    tracker = mlflow_for(cfg)
    for rnd in range(cfg.federation.rounds + 1):
        start = time.perf_counter()
        if storage.exists(layout.metrics_path(rnd)):
            metrics = json.loads(storage.read_bytes(layout.metrics_path(rnd), 1 << 20, what="metrics"))
        else:
            metrics, _ = evaluate(cfg, rnd=rnd)
        summary = RoundSummary(round=rnd, metrics=metrics)
        if rnd < cfg.federation.rounds:
            if not storage.exists(layout.global_path(rnd + 1)):
                for client in range(cfg.federation.num_clients):
                    if storage.exists(layout.client_path(rnd, client)):
                        continue
                    result = train_client(cfg, client, rnd=rnd)
                    summary.clients.append(result)
                    if on_client:
                        on_client(result)
                summary.upload = aggregate(cfg, rnd=rnd)
            else:
                summary.upload = _upload_summary(layout, rnd)
        summary.wall_seconds = time.perf_counter() - start
        summaries.append(summary)
        if board:
            board.scalars("eval", summary.metrics, rnd)
            board.scalars("round", summary.row(metric_names(cfg)[0]), rnd)
            for client in summary.clients:
                board.scalars(f"client_{client.client:03d}", vars(client), rnd)
        if tracker:
            tracker.scalars("eval", summary.metrics, rnd)
            tracker.scalars("round", summary.row(metric_names(cfg)[0]), rnd)
        if on_round:
            on_round(summary)
    if board:
        board.close()
    if tracker:
        tracker.finish(cfg.run_dir)
    return summaries




# ------------------------------------------------------------------------------------------ inspect


def inspect(path: str, global_path: str | None = None) -> dict[str, Any]:
    """Metadata, densities and bits per weight of any checkpoint (coded files need ``global_path``)."""
    meta = checkpoint.read_meta(path)
    reference = load_global(global_path) if global_path else None
    if meta.encoding in checkpoint.CODED_ENCODINGS and reference is None:
        ckpt = None
    else:
        ckpt = checkpoint.load_checkpoint(path, reference=reference)
    modules = []
    ideal_total = 0.0 if reference is not None and meta.kind != "scaling" and meta.role == "client" else None
    for name, target in meta.targets.items():
        numel = math.prod(target.shape)
        row: dict[str, Any] = {"module": name, "shape": target.shape, "weights": numel}
        if ckpt is not None:
            row["density"] = ckpt.module_densities()[name]
            if ideal_total is not None and reference is not None:
                ideal = coding.ideal_bits(ckpt.tensors[f"mask/{name}"], checkpoint.reference_probs(meta, name, reference))
                ideal_total += ideal
                row["ideal_bits_per_weight"] = ideal / numel
        modules.append(row)
    if ckpt is not None:
        stored_bits = _stored_bits(path)
        for row in modules:
            row["bits_per_weight"] = stored_bits.get(row["module"], 0) / row["weights"]
    info: dict[str, Any] = {
        "path": path,
        "kind": meta.kind,
        "role": meta.role,
        "round": meta.round,
        "client": meta.client,
        "num_examples": meta.num_examples,
        "density": ckpt.density() if ckpt is not None else None,
        "bits_per_weight": meta.bits_per_weight,
        "ideal_bits_per_weight": ideal_total / meta.num_weights if ideal_total is not None else None,
        "encoding": meta.encoding,
        "num_weights": meta.num_weights,
        "num_targets": len(meta.targets),
        "base_model": meta.base_model.model_dump(),
        "labels": meta.labels,
        "config_digest": meta.config_digest,
        "parent_digest": meta.parent_digest,
        "digest": ckpt.digest if ckpt is not None else None,
        "aggregation": meta.aggregation.model_dump() if meta.aggregation else None,
        "modules": modules,
    }
    return info


def _stored_bits(path: str) -> dict[str, int]:
    """Payload bits per module as stored in the file (from the safetensors header offsets)."""
    data = storage.read_bytes(path, checkpoint.MAX_FILE_BYTES, what="checkpoint")
    header, _ = checkpoint.parse_header(data, path)
    out: dict[str, int] = {}
    for key, entry in header.items():
        group, _, name = key.partition("/")
        if group in ("probs", "mask", "code", "scale"):
            start, end = entry["data_offsets"]
            out[name] = out.get(name, 0) + 8 * (end - start)
    return out


# ------------------------------------------------------------------------------------------- export


def export(
    checkpoint_path: str, out: str, *, cfg: Config | None = None, eval_mode: str = "expected", force: bool = False
) -> dict[str, Any]:
    """Write a plain Hugging Face model directory with the global mask baked into the weights."""
    gl = load_global(checkpoint_path)
    meta = gl.meta
    if os.path.exists(out) and not force:
        raise SupermaskError(f"'{out}' already exists; pass --force to overwrite it")
    if cfg is None:
        cfg = config_from_dict(
            {"model": {"name": meta.base_model.name, "revision": meta.base_model.revision},
             "mask": {"kind": meta.kind, "target_modules": list(meta.targets)}},
            source=checkpoint_path,
        )
    base = load_base(cfg, meta.labels)
    check_base_matches(base, gl)
    model = bake_global(base, gl, eval_mode, seed=derive_seed(cfg.seed, meta.round, -1))
    if meta.labels:
        model.config.id2label = dict(enumerate(meta.labels))
        model.config.label2id = {name: i for i, name in enumerate(meta.labels)}
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".export-")
    try:
        model.save_pretrained(tmp)
        base.tokenizer.save_pretrained(tmp)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"path": out, "kind": meta.kind, "round": meta.round, "eval_mode": eval_mode, "num_targets": len(meta.targets)}
