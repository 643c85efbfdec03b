"""What travels between the Flower ServerApp and ClientApp: file bytes as one uint8 ``Array`` in an
``ArrayRecord`` (Flower chunks large arrays), and the few record and config names both sides use."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

FILE = "file"  # the ArrayRecord entry holding a file's bytes

# RecordDict entries
SETUP = "setup"  # ConfigRecord server -> client: config text, round, client, global digest, is_delta
GLOBAL = "global"  # ArrayRecord server -> client: the round's global, full or as a delta
UPLOAD = "upload"  # ArrayRecord client -> server: the client file
RESULT = "result"  # ConfigRecord client -> server: status, held global digest, training numbers
NODE = "node"  # ConfigRecord client -> server (query reply): client id, held global digest

NEED_FULL = "need-full"  # a client's status when it cannot rebuild the global from a delta
OK = "ok"
REFUSED = "refused"  # the node's privacy policy refused the request (RESULT["reason"] says why)


def file_record(data: bytes) -> ArrayRecord:
    """Bytes -> an ArrayRecord holding them as one 1-D uint8 array."""
    return ArrayRecord({FILE: Array(np.frombuffer(data, dtype=np.uint8))})


def record_bytes(record: ArrayRecord, what: str) -> bytes:
    """The bytes held by :func:`file_record`; raises ValueError on anything else."""
    if FILE not in record:
        raise ValueError(f"{what}: no '{FILE}' array in the record")
    array = record[FILE].numpy()
    if array.dtype != np.uint8 or array.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D uint8 array, got {array.dtype} with shape {array.shape}")
    return array.tobytes()
