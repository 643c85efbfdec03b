"""``init``: the resolved config, the pool record and round 0's global (the pretrained model, every weight kept)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import __version__, checkpoint, storage
from ..checkpoint import BaseModelMeta, FileMeta, PoolMeta, TargetMeta
from ..config import Config, config_digest, dump_config
from ..errors import SupermaskError
from ..layout import Layout
from ..mask.kinds import kind_of
from ..mask.layer import out_features
from ..model import BaseModel
from .checks import load_base
from .participants import write_participants
from .pool import decide_source, is_regression, pool_meta, resolve_label_names, resolved


@dataclass
class InitResult:
    path: str
    digest: str
    num_targets: int
    num_weights: int
    target_counts: dict[str, int]
    label_names: list[str] | None
    pool: PoolMeta | None = None


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


def initial_tensors(cfg: Config, base: BaseModel) -> dict[str, torch.Tensor]:
    """Round 0's global tensors: the base model's head and masks that keep every weight."""
    spec = kind_of(cfg.mask.kind)
    tensors: dict[str, torch.Tensor] = {f"head/{k}": v for k, v in base.head_state().items()}
    for name, shape in base.target_shapes().items():
        module = base.model.get_submodule(name)
        tensors[f"{spec.global_group}/{name}"] = spec.initial(shape, module, cfg.mask.init_density)
    return tensors


def global_meta(cfg: Config, base: BaseModel, pool: PoolMeta | None) -> FileMeta:
    """Round 0's metadata; every later file copies it and changes what its step changes."""
    return FileMeta(
        format=checkpoint.FORMAT_NAME,
        format_version=checkpoint.FORMAT_VERSION,
        kind=cfg.mask.kind,
        role="global",
        round=0,
        client=None,
        num_examples=0,
        base_model=BaseModelMeta(name=cfg.model.name, revision=cfg.model.revision, fingerprint=base.fingerprint()),
        targets={
            n: TargetMeta(shape=s, out_features=out_features(base.model.get_submodule(n)))
            for n, s in base.target_shapes().items()
        },
        head={k: list(v.shape) for k, v in base.head_state().items()},
        labels=cfg.data.label_names if not is_regression(cfg) else None,
        config_digest=config_digest(cfg),
        parent_digest=None,
        encoding=kind_of(cfg.mask.kind).global_encoding,
        mask_bits=0,
        pool=pool,
        created_by=f"supermask {__version__}",
    )


def init(cfg: Config, *, out: str | None = None, force: bool = False) -> tuple[InitResult, Config]:
    """Write the resolved config and round 0's global (with its participants when in the run dir).

    ``data.source: auto`` is decided here, once: the resolved config and the pool record say
    which source every client must use."""
    layout = Layout(cfg.run_dir)
    path = out or layout.global_path(0)
    if storage.exists(path) and not force:
        raise SupermaskError(f"'{path}' already exists; pass --force to overwrite it, or `supermask run` to resume")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"source": decide_source(cfg)})})
    labels = resolve_label_names(cfg)
    cfg = resolved(cfg, labels)
    pool = pool_meta(cfg, labels)
    base = load_base(cfg, labels)
    meta = global_meta(cfg, base, pool)
    stored = checkpoint.encode_tensors(meta, initial_tensors(cfg, base), None)
    meta = meta.model_copy(update={"mask_bits": checkpoint.payload_bits(stored)})
    if out is None:
        _write_config(layout, cfg, force)
    digest = checkpoint.save_checkpoint(path, meta, stored, force=force)
    if out is None:
        write_participants(layout, cfg, 0)
    result = InitResult(
        path=path,
        digest=digest,
        num_targets=len(meta.targets),
        num_weights=meta.num_weights,
        target_counts=base.target_counts,
        label_names=labels,
        pool=pool,
    )
    return result, cfg
