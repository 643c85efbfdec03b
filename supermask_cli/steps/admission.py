"""Admitting an upload into a round: every check ``aggregate`` makes, before the file counts in
the round; one that fails goes to ``round_R/rejected/`` (the file, when its size allowed reading
it, and ``client_CCC.reason.txt``, one line), never into the round. Flower uploads are checked
before they are written to ``round_R/clients/``; files a client wrote there itself are checked
where they lie (``admit_round``) and moved out when they fail."""

from __future__ import annotations

import time

from .. import checkpoint, storage
from ..checkpoint import Checkpoint
from ..config import Config
from ..errors import CheckpointError, SupermaskError
from ..layout import Layout
from .checks import check_client

WAIT_POLL_SECONDS = 2.0


def upload_limit(gl: Checkpoint, cfg: Config) -> int:
    """The largest upload ``gl``'s round accepts (masked inputs under secure aggregation are wider)."""
    return checkpoint.max_client_bytes(gl.meta, masked=cfg.secure_aggregation.enabled)


def check_upload(data: bytes, name: str, gl: Checkpoint, cfg: Config, client: int) -> Checkpoint:
    """``data`` as client ``client``'s upload for ``gl``'s round: format, tensors, run, round, parent,
    client; raises CheckpointError (one line starting with ``name``)."""
    limit = upload_limit(gl, cfg)
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


def recheck_present(cfg: Config, layout: Layout, gl: Checkpoint, rnd: int, clients: list[int],
                    sampled: list[int] | None = None) -> dict[int, str]:
    """The files already in ``clients/`` for ``clients`` (left by an earlier run, written by the
    client itself through files, or put there by anyone with write access), each checked again:
    size before reading, then every check ``aggregate`` makes, and (given ``sampled``) that the
    client was sampled for the round. One that fails is moved to ``rejected/`` with its reason.
    Returns client -> reason for every file moved."""
    moved: dict[int, str] = {}
    limit = upload_limit(gl, cfg)
    for client in clients:
        path = layout.client_path(rnd, client)
        if not storage.exists(path):
            continue
        data = None
        try:
            if sampled is not None and client not in sampled:
                raise CheckpointError(f"{path}: client {client} was not sampled for round {rnd} (participants: {sampled})")
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


def admit_round(cfg: Config, layout: Layout, gl: Checkpoint, rnd: int, sampled: list[int],
                wait: float | None = None) -> dict[int, str]:
    """The round's inbox (``clients/``) admitted: every file there checked (``recheck_present``),
    the ones that fail moved to ``rejected/``. With ``wait``, keep admitting new arrivals (a client
    whose upload was refused may upload again) until every sampled client has an admitted file or
    ``wait`` seconds pass. Returns client -> path of the admitted uploads."""
    deadline = time.monotonic() + (wait or 0.0)
    admitted: dict[int, str] = {}
    while True:
        present = layout.uploads(rnd)
        new = sorted(c for c in present if c not in admitted)
        moved = recheck_present(cfg, layout, gl, rnd, new, sampled=sampled)
        admitted.update({c: present[c] for c in new if c not in moved})
        if set(sampled) <= set(admitted) or time.monotonic() >= deadline:
            return admitted
        time.sleep(min(WAIT_POLL_SECONDS, max(deadline - time.monotonic(), 0.0)))
