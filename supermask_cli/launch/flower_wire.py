"""What travels between the Flower ServerApp and ClientApp, as plain values.

File bytes travel as one 1-D uint8 ``Array`` in an ``ArrayRecord`` (Flower chunks large arrays).
This module holds the record names both sides use and the flwr-free shapes the server's round logic
(:mod:`.flower_rounds`) and the reply checks (:mod:`.flower_replies`) work on: :class:`Outgoing`
(a message to send), :class:`Reply` (a message received, with :class:`Record` and
:class:`ArrayView` for its records, the array bytes not yet deserialised). Only
:func:`file_record` and :func:`outgoing_message` import flwr, when called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

FILE = "file"  # the ArrayRecord entry holding a file's bytes

# RecordDict entries
SETUP = "setup"  # ConfigRecord server -> client: config text, round, client, global digest, is_delta
GLOBAL = "global"  # ArrayRecord server -> client: the round's global, full or as a delta
UPLOAD = "upload"  # ArrayRecord client -> server: the client file
RESULT = "result"  # ConfigRecord client -> server: status, round, held global digest, training numbers
NODE = "node"  # ConfigRecord client -> server (query reply): client id, held global digest

NEED_FULL = "need-full"  # a client's status when it cannot rebuild the global from a delta
OK = "ok"
REFUSED = "refused"  # the node's privacy policy refused the request (RESULT["reason"] says why)

QUERY = "query"
TRAIN = "train"

CONFIG, ARRAY, METRIC = "config", "array", "metric"  # Record.type
_RECORD_TYPES = {"ConfigRecord": CONFIG, "ArrayRecord": ARRAY, "MetricRecord": METRIC}


@dataclass(frozen=True)
class ArrayView:
    """One ``flwr.app.Array`` as it arrived: what its sender declares, and the serialised bytes."""

    dtype: Any
    shape: Any
    stype: Any
    data: Any  # the bytes of an .npy file (Flower's numpy serialisation); not yet read


@dataclass(frozen=True)
class Record:
    type: str  # config | array | metric | the class name of anything else
    items: dict[str, Any]  # config values, or name -> ArrayView


@dataclass(frozen=True)
class Reply:
    node: int  # the SuperNode it came from
    reply_to: str  # the message id it answers
    kind: str  # message_type
    group: str  # group_id
    error: str | None  # the ClientApp's error reason, when the reply is an error
    records: dict[str, Record] = field(default_factory=dict)


@dataclass(frozen=True)
class Outgoing:
    node: int
    kind: str  # query | train
    group: str = ""
    setup: dict[str, Any] | None = None  # the SETUP ConfigRecord
    payload: bytes | None = None  # the GLOBAL file bytes


def _record(value: Any) -> Record:
    record_type = _RECORD_TYPES.get(type(value).__name__, type(value).__name__)
    if record_type == ARRAY:
        items = {str(k): ArrayView(getattr(a, "dtype", None), getattr(a, "shape", None), getattr(a, "stype", None),
                                   getattr(a, "data", None)) for k, a in value.items()}
    elif record_type in (CONFIG, METRIC):
        items = dict(value.items())
    else:
        items = {}
    return Record(type=record_type, items=items)


def reply_from_message(message: Any) -> Reply:
    """A received ``flwr.app.Message`` as a :class:`Reply`, nothing deserialised or trusted yet."""
    meta = message.metadata
    error = None
    if message.has_error():
        error = str(getattr(message.error, "reason", "") or "no reason given")
        records: dict[str, Record] = {}
    else:
        records = {str(name): _record(rec) for name, rec in message.content.items()}
    return Reply(node=int(meta.src_node_id), reply_to=str(meta.reply_to_message_id), kind=str(meta.message_type),
                 group=str(meta.group_id), error=error, records=records)


def file_record(data: bytes):
    """Bytes -> an ArrayRecord holding them as one 1-D uint8 array."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({FILE: Array(np.frombuffer(data, dtype=np.uint8))})


def record_bytes(record: Any, what: str) -> bytes:
    """The bytes held by :func:`file_record` (the ClientApp reading the server's global)."""
    if FILE not in record:
        raise ValueError(f"{what}: no '{FILE}' array in the record")
    array = record[FILE].numpy()
    if array.dtype != np.uint8 or array.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D uint8 array, got {array.dtype} with shape {array.shape}")
    return array.tobytes()


def outgoing_message(out: Outgoing):
    """An :class:`Outgoing` as a ``flwr.app.Message``."""
    from flwr.app import ConfigRecord, Message, RecordDict

    content = RecordDict()
    if out.setup is not None:
        content[SETUP] = ConfigRecord(dict(out.setup))
    if out.payload is not None:
        content[GLOBAL] = file_record(out.payload)
    return Message(content, dst_node_id=out.node, message_type=out.kind, group_id=out.group)
