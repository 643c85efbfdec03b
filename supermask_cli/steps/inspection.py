"""``inspect`` and ``export``: read any checkpoint; bake a global into a plain Hugging Face model."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from typing import Any

from .. import checkpoint, coding, storage
from ..config import Config, config_from_dict
from ..errors import SupermaskError
from ..mask.kinds import kind_of
from ..masked_model import bake_global
from .checks import check_base_matches, derive_seed, load_base, load_global
from .evaluation import EVAL_STREAM


def inspect(path: str, global_path: str | None = None) -> dict[str, Any]:
    """Metadata, densities and bits per weight of any checkpoint (coded files need ``global_path``)."""
    meta = checkpoint.read_meta(path)
    reference = load_global(global_path) if global_path else None
    masked = meta.secure_aggregation is not None  # uniform words: no density, no mask to show
    if (meta.encoding in checkpoint.CODED_ENCODINGS and reference is None) or masked:
        ckpt = None
    else:
        ckpt = checkpoint.load_checkpoint(path, reference=reference)
    modules = []
    ideal_total = 0.0 if reference is not None and kind_of(meta.kind).binary and meta.role == "client" else None
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
        "privacy": meta.privacy.model_dump() if meta.privacy else None,
        "secure_aggregation": masked,
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


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _publish_local(tmp: str, out: str) -> None:
    """Move the finished directory ``tmp`` to ``out``; an old ``out`` is kept until then and removed after."""
    old = None
    if os.path.exists(out):
        old = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(out)), prefix=".export-old-")
        os.rmdir(old)
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _publish_url(tmp: str, out: str) -> None:
    """Upload every file of ``tmp`` under the URL ``out`` (one PUT each), then remove stale ones."""
    names = sorted(os.listdir(tmp))
    for name in names:
        with open(os.path.join(tmp, name), "rb") as handle:
            storage.write_atomic(storage.join(out, name), handle.read(), force=True)
    fs, root = storage.filesystem(out)
    for name in storage.listdir(out):
        if name not in names:
            fs.rm(f"{root.rstrip('/')}/{name}", recursive=True)


def export(
    checkpoint_path: str, out: str, *, cfg: Config | None = None, eval_mode: str = "expected", force: bool = False
) -> dict[str, Any]:
    """Write a plain Hugging Face model directory (a local path or a storage URL) with the global
    mask baked into the weights. The model is written completely before ``out`` is touched."""
    gl = load_global(checkpoint_path)
    meta = gl.meta
    if out.startswith("file://"):
        out = out[len("file://"):]
    if storage.exists(out) and not force:
        raise SupermaskError(f"'{out}' already exists; pass --force to overwrite it")
    if cfg is None:
        cfg = config_from_dict(
            {"model": {"name": meta.base_model.name, "revision": meta.base_model.revision},
             "mask": {"kind": meta.kind, "target_modules": list(meta.targets)}},
            source=checkpoint_path,
        )
    base = load_base(cfg, meta.labels)
    check_base_matches(base, gl)
    model = bake_global(base, gl, eval_mode, seed=derive_seed(cfg.seed, meta.round, EVAL_STREAM))
    if meta.labels:
        model.config.id2label = dict(enumerate(meta.labels))
        model.config.label2id = {name: i for i, name in enumerate(meta.labels)}
    parent = tempfile.gettempdir() if _is_url(out) else os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".export-")
    try:
        model.save_pretrained(tmp)
        base.tokenizer.save_pretrained(tmp)
        (_publish_url if _is_url(out) else _publish_local)(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"path": out, "kind": meta.kind, "round": meta.round, "eval_mode": eval_mode, "num_targets": len(meta.targets)}
