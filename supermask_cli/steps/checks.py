"""Run-level checks shared by the steps: the global, the base model, the config, client files."""

from __future__ import annotations

import hashlib

from .. import checkpoint, storage
from ..checkpoint import Checkpoint, FileMeta
from ..config import Config, config_digest
from ..errors import CheckpointError, SupermaskError
from ..layout import Layout
from ..model import BaseModel, load_base_model
from .pool import resolved


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


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, round, client, purpose)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


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
    config resolved with the run's labels and the data source recorded at ``init``."""
    layout = Layout(cfg.run_dir)
    if global_path is None:
        global_path = layout.global_path(latest_round(layout) if rnd is None else rnd)
    gl = load_global(global_path)
    cfg = resolved(cfg, gl.meta.labels, gl.meta.pool)
    check_config(gl, cfg)
    return layout, gl, cfg
