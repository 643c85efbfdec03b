"""Every Flower reply checked field by field before the server uses it: one function per message
kind turns a :class:`~.flower_wire.Reply` into typed values or raises :class:`Refused`, one line
naming the node (and the client it stands for). No flwr import: the checks run on plain values.

What a reply must be: an answer to a message this server sent (same message id, from the node it
was sent to, same kind and round group), not an error, with exactly the records of its kind, each of
the right record type, holding exactly the expected keys with values of the expected type and range.
An upload's size is checked from what the array declares and the length of its serialised bytes,
against the limit the round's global allows (:func:`supermask_cli.checkpoint.max_client_bytes`),
before any of it is deserialised, copied or written.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass

from ..errors import SupermaskError
from . import flower_wire as wire
from .flower_wire import ArrayView, Record, Reply

DIGEST = re.compile(r"^[0-9a-f]{64}$")
NPY_HEADER_MAX = 4096  # an .npy preamble of a 1-D uint8 array is 128 bytes; anything far above is not one
MAX_STEPS = 10**9
MAX_SECONDS = 10.0**7
MAX_REASON = 500  # characters of a refusal reason kept


class Refused(SupermaskError):
    """A reply the server does not use; its message names the node."""


@dataclass(frozen=True)
class Sent:
    """What the server sent, that a reply must answer."""

    message_id: str
    node: int
    kind: str
    group: str = ""
    client: int | None = None  # the client whose work a train message carries
    round: int | None = None


@dataclass(frozen=True)
class NodeInfo:
    client: int
    holds: str  # digest of the global the node holds, "" when none


@dataclass(frozen=True)
class TrainReply:
    status: str  # ok | need-full | refused
    holds: str
    upload: bytes  # the client file (empty unless ok)
    num_examples: int = 0
    steps: int = 0
    replayed: bool = False
    mean_loss: float = math.nan
    seconds: float = 0.0
    reason: str = ""  # why the node's privacy policy refused


def who(node: int, client: int | None = None) -> str:
    return f"node {node}" + (f" (client {client})" if client is not None else "")


def refuse(node: int, client: int | None, reason: str) -> Refused:
    one_line = " ".join(str(reason).split())
    return Refused(f"{who(node, client)}: {one_line}")


def last_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no reason given"


def envelope(reply: Reply, sent: Sent) -> None:
    """The reply answers ``sent``: from its node, of its kind and round group, and not an error."""
    if reply.reply_to != sent.message_id:
        raise refuse(reply.node, None, f"replied to message {reply.reply_to!r}, which this server did not send it")
    if reply.node != sent.node:
        raise refuse(reply.node, None, f"answered a message sent to node {sent.node}")
    if reply.kind != sent.kind:
        raise refuse(reply.node, sent.client, f"a {reply.kind!r} reply to a {sent.kind!r} message")
    if reply.group != sent.group:
        raise refuse(reply.node, sent.client, f"a reply for round group {reply.group!r}, not {sent.group!r}")
    if reply.error is not None:
        raise refuse(reply.node, sent.client, f"the ClientApp failed: {last_line(reply.error)}")


def _records(reply: Reply, sent: Sent, expected: dict[str, str]) -> dict[str, Record]:
    missing = sorted(set(expected) - set(reply.records))
    extra = sorted(set(reply.records) - set(expected))
    if missing or extra:
        what = "; ".join(filter(None, [missing and f"missing record(s) {', '.join(missing)}",
                                        extra and f"unexpected record(s) {', '.join(extra)}"]))
        raise refuse(reply.node, sent.client, f"{sent.kind} reply: {what}")
    for name, record_type in expected.items():
        if reply.records[name].type != record_type:
            raise refuse(reply.node, sent.client,
                         f"{sent.kind} reply: record {name!r} is a {reply.records[name].type} record, not {record_type}")
    return reply.records


def _keys(record: Record, name: str, reply: Reply, sent: Sent, required: set[str]) -> dict:
    items = record.items
    missing, extra = sorted(required - set(items)), sorted(set(items) - required)
    if missing or extra:
        what = "; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                        extra and f"unexpected {', '.join(extra)}"]))
        raise refuse(reply.node, sent.client, f"record {name!r}: {what}")
    return items


def _int(value, what: str, low: int, high: int, reply: Reply, sent: Sent) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise refuse(reply.node, sent.client, f"{what} {value!r} is not an integer")
    if not low <= value <= high:
        raise refuse(reply.node, sent.client, f"{what} {value} is outside {low}..{high}")
    return value


def _float(value, what: str, low: float, high: float, reply: Reply, sent: Sent) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise refuse(reply.node, sent.client, f"{what} {value!r} is not a number")
    if not (math.isfinite(value) and low <= value <= high):
        raise refuse(reply.node, sent.client, f"{what} {value!r} is not a finite number in [{low}, {high}]")
    return float(value)


def _digest(value, what: str, reply: Reply, sent: Sent) -> str:
    if not isinstance(value, str) or not (value == "" or DIGEST.match(value)):
        raise refuse(reply.node, sent.client, f"{what} {str(value)[:80]!r} is not a SHA-256 hex digest")
    return value


def query_reply(reply: Reply, sent: Sent, num_clients: int) -> NodeInfo:
    """A query reply: which client the node says it is, and the global it holds."""
    envelope(reply, sent)
    node = _records(reply, sent, {wire.NODE: wire.CONFIG})[wire.NODE]
    items = _keys(node, wire.NODE, reply, sent, {"client-id", "holds"})
    client = _int(items["client-id"], "client-id", 0, num_clients - 1, reply, sent)
    return NodeInfo(client=client, holds=_digest(items["holds"], "holds", reply, sent))


def train_reply(reply: Reply, sent: Sent, *, max_bytes: int, max_examples: int, with_loss: bool = True) -> TrainReply:
    """A train reply: its result numbers and its upload's bytes (size checked before they are read).
    ``with_loss``: the run has no privacy, so the result carries the training loss and time (with
    privacy on it must not: they are statistics of the data that no noise covers)."""
    envelope(reply, sent)
    records = _records(reply, sent, {wire.RESULT: wire.CONFIG, wire.UPLOAD: wire.ARRAY})
    result = records[wire.RESULT].items
    status = result.get("status")
    if status not in (wire.OK, wire.NEED_FULL, wire.REFUSED):
        raise refuse(reply.node, sent.client, f"result status {str(status)[:80]!r} is not one of ok, need-full, refused")
    base = {"status", "holds", "round"}
    numbers = {"num_examples", "steps", "replayed", *(("mean_loss", "seconds") if with_loss else ())}
    required = {wire.OK: base | numbers, wire.NEED_FULL: base, wire.REFUSED: base | {"reason"}}[status]
    _keys(records[wire.RESULT], wire.RESULT, reply, sent, required)
    rnd = _int(result["round"], "result round", 0, 10**9, reply, sent)
    if sent.round is not None and rnd != sent.round:
        when = "an earlier" if rnd < sent.round else "a later"
        raise refuse(reply.node, sent.client, f"a result for {when} round ({rnd}), this is round {sent.round}")
    holds = _digest(result["holds"], "holds", reply, sent)
    files = _keys(records[wire.UPLOAD], wire.UPLOAD, reply, sent, {wire.FILE})
    if status != wire.OK:
        upload_bytes(files[wire.FILE], 0, reply, sent)
        reason = result.get("reason", "")
        if not isinstance(reason, str):
            raise refuse(reply.node, sent.client, f"refusal reason {str(reason)[:80]!r} is not text")
        return TrainReply(status=status, holds=holds, upload=b"", reason=" ".join(reason.split())[:MAX_REASON])
    num_examples = _int(result["num_examples"], "num_examples", 1, max_examples, reply, sent)
    steps = _int(result["steps"], "steps", 0, MAX_STEPS, reply, sent)
    if not isinstance(result["replayed"], bool):
        raise refuse(reply.node, sent.client, f"replayed {str(result['replayed'])[:80]!r} is not true or false")
    loss, seconds = result.get("mean_loss", math.nan), result.get("seconds", 0.0)
    no_loss = not with_loss or (steps == 0 and isinstance(loss, float) and math.isnan(loss))  # no mean to check
    return TrainReply(
        status=status, holds=holds, num_examples=num_examples, steps=steps, replayed=result["replayed"],
        mean_loss=loss if no_loss else _float(loss, "mean_loss", -1e30, 1e30, reply, sent),
        seconds=_float(seconds, "seconds", 0.0, MAX_SECONDS, reply, sent),
        upload=upload_bytes(files[wire.FILE], max_bytes, reply, sent),
    )


def upload_bytes(view: ArrayView, max_bytes: int, reply: Reply, sent: Sent) -> bytes:
    """The bytes of a 1-D uint8 array of at most ``max_bytes``: the declared dtype, shape and the
    serialised length are checked before the bytes are read, then the .npy preamble must agree."""
    def no(reason: str) -> Refused:
        return refuse(reply.node, sent.client, f"upload: {reason}")

    if not isinstance(view, ArrayView):
        raise no("not an array")
    if view.stype != "numpy.ndarray" or view.dtype != "uint8":
        raise no(f"a {str(view.dtype)[:40]} array of serialisation {str(view.stype)[:40]!r}, not numpy uint8 bytes")
    shape = view.shape
    if not (isinstance(shape, (tuple, list)) and len(shape) == 1 and isinstance(shape[0], int)
            and not isinstance(shape[0], bool) and shape[0] >= 0):
        raise no(f"shape {str(shape)[:80]}: not a 1-D array")
    if shape[0] > max_bytes:
        raise no(f"{shape[0]} bytes, over the {max_bytes}-byte limit of this round's client files")
    if not isinstance(view.data, (bytes, bytearray, memoryview)):
        raise no("its data is not bytes")
    size = len(view.data)
    if size > shape[0] + NPY_HEADER_MAX:
        raise no(f"{size} serialised bytes for a declared {shape[0]}-byte array")
    preamble = bytes(view.data[: min(size, NPY_HEADER_MAX)])
    offset = _npy_offset(preamble, shape[0])
    if offset is None or offset + shape[0] != size:
        raise no("its .npy data does not hold exactly the declared 1-D uint8 array")
    return bytes(view.data[offset:])


def _npy_offset(preamble: bytes, length: int) -> int | None:
    """Where the data of an .npy file holding a C-order 1-D uint8 array of ``length`` starts, or None."""
    if preamble[:6] != b"\x93NUMPY" or len(preamble) < 10:
        return None
    major = preamble[6]
    if major == 1:
        n, start = int.from_bytes(preamble[8:10], "little"), 10
    elif major in (2, 3) and len(preamble) >= 12:
        n, start = int.from_bytes(preamble[8:12], "little"), 12
    else:
        return None
    if start + n > len(preamble):
        return None
    try:
        header = ast.literal_eval(preamble[start : start + n].decode("latin1"))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if header != {"descr": "|u1", "fortran_order": False, "shape": (length,)}:
        return None
    return start + n
