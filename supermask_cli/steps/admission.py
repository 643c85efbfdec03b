"""Admitting an upload into a round: every check ``aggregate`` makes, before the file enters
``round_R/clients/``; one that fails goes to ``round_R/rejected/`` (the file, when its size allowed
reading it, and ``client_CCC.reason.txt``, one line), never into the round."""

from __future__ import annotations

from .. import checkpoint, storage
from ..checkpoint import Checkpoint
from ..config import Config
from ..errors import CheckpointError, SupermaskError
from ..layout import Layout
from .checks import check_client


def check_upload(data: bytes, name: str, gl: Checkpoint, cfg: Config, client: int) -> Checkpoint:
    """``data`` as client ``client``'s upload for ``gl``'s round: format, tensors, run, round, parent,
    client; raises CheckpointError (one line starting with ``name``)."""
    limit = checkpoint.max_client_bytes(gl.meta)
    if len(data) > limit:
        raise CheckpointError(f"{name}: is {len(data)} bytes, over the {limit}-byte limit")
    ckpt = checkpoint.loads(data, name, reference=gl)
    check_client(ckpt.meta, name, gl, cfg)
    if ckpt.meta.client != client:
        raise CheckpointError(f"{name}: a file of client {ckpt.meta.client}, not of client {client}")
    return ckpt


def quarantine(layout: Layout, rnd: int, client: int, data: bytes | None, reason: str) -> str:
    """Keep a refused upload out of the round: ``rejected/client_CCC.safetensors`` (when ``data``) and its
    one-line reason. Returns the reason's path."""
    if data is not None:
        storage.write_atomic(layout.rejected_path(rnd, client), data, force=True)
    path = layout.rejected_reason_path(rnd, client)
    storage.write_text_atomic(path, " ".join(reason.split()) + "\n", force=True)
    return path


def recheck_present(cfg: Config, layout: Layout, gl: Checkpoint, rnd: int, clients: list[int]) -> dict[int, str]:
    """The files already in ``clients/`` for ``clients`` (left by an earlier run, or put there by
    anyone with write access), each checked again; one that fails is moved to ``rejected/``.
    Returns client -> reason for every file moved."""
    moved: dict[int, str] = {}
    limit = checkpoint.max_client_bytes(gl.meta)
    for client in clients:
        path = layout.client_path(rnd, client)
        if not storage.exists(path):
            continue
        data = None
        try:
            data = storage.read_bytes(path, limit, what="client file")
            check_upload(data, path, gl, cfg, client)
            continue
        except SupermaskError as exc:
            reason = str(exc)
        except Exception as exc:  # a file the format checks missed still stays out of the round
            reason = f"{path}: unreadable ({type(exc).__name__})"
        quarantine(layout, rnd, client, data, reason)
        fs, p = storage.filesystem(path)
        fs.rm(p)
        moved[client] = reason
    return moved
