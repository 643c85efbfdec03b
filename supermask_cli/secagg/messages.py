"""The public messages of a round as strict JSON (under ``<run_dir>/round_RRR/secagg/``).

Every message names its kind, round, config digest and (except the survivor list) its client;
bytes are lowercase hex; client ids used as object keys are canonical decimal strings. Parsing
refuses anything else — unknown or missing fields, wrong types, wrong lengths — in one line
naming the file and the field. Nothing secret is ever in a message: public keys, sealed shares,
share digests, the survivor list, and unmask shares the client chose to reveal.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import SecureAggregationError

FORMAT = "supermask-secagg"
VERSION = 1
_HEX = re.compile(r"^(?:[0-9a-f]{2})*$")
_ID = re.compile(r"^(?:0|[1-9][0-9]*)$")

FIELDS = {
    "keys": {"client": int, "num_examples": int, "channel_public": "hex32", "mask_public": "hex32", "signature": "hex"},
    "shares": {"client": int, "threshold": int, "holders": "holders"},
    "survivors": {"threshold": int, "participants": "ids", "survivors": "ids", "dropped": "ids"},
    "unmask": {"client": int, "self": "id_hex32", "pair": "id_hex32"},
}
_HOLDER = {"sealed": "hex", "self_digest": "hex32", "pair_digest": "hex32"}


def dumps(message: str, rnd: int, config_digest: str, **fields: Any) -> bytes:
    body = {"format": FORMAT, "version": VERSION, "message": message, "round": rnd, "config_digest": config_digest, **fields}
    return (json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n").encode()


def _fail(where: str, why: str):
    raise SecureAggregationError(f"{where}: {why}")


def _hex(value: Any, where: str, length: int | None) -> bytes:
    if not isinstance(value, str) or not _HEX.match(value) or (length is not None and len(value) != 2 * length):
        _fail(where, f"expected {'%d bytes of ' % length if length else ''}lowercase hex")
    return bytes.fromhex(value)


def _int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        _fail(where, "expected a non-negative integer")
    return value


def _id_map(value: Any, where: str, check) -> dict[int, Any]:
    if not isinstance(value, dict):
        _fail(where, "expected an object keyed by client id")
    out = {}
    for key, item in value.items():
        if not _ID.match(key):
            _fail(where, f"key {key!r} is not a client id")
        out[int(key)] = check(item, f"{where}[{key}]")
    return out


def _field(field_type: str, value: Any, where: str) -> Any:
    if field_type is int:
        return _int(value, where)
    if field_type == "hex32":
        return _hex(value, where, 32)
    if field_type == "hex":
        return _hex(value, where, None)
    if field_type == "ids":
        if not isinstance(value, list) or value != sorted(set(value)):
            _fail(where, "expected a sorted list of distinct client ids")
        return [_int(v, where) for v in value]
    if field_type == "id_hex32":
        return _id_map(value, where, lambda v, w: _hex(v, w, 32))
    if field_type == "holders":
        return _id_map(value, where, lambda v, w: _object(v, _HOLDER, w))
    raise AssertionError(field_type)


def _object(value: Any, spec: dict, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(where, "expected an object")
    missing, unknown = set(spec) - set(value), set(value) - set(spec)
    if missing:
        _fail(where, f"missing fields {sorted(missing)}")
    if unknown:
        _fail(where, f"unknown fields {sorted(unknown)}")
    return {key: _field(field_type, value[key], f"{where}: field '{key}'") for key, field_type in spec.items()}


def _no_duplicates(where: str):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        for key in keys:
            if keys.count(key) > 1:
                _fail(where, f"key {key!r} appears twice")
        return dict(pairs)

    return hook


def loads(data: bytes, message: str, *, where: str, rnd: int, config_digest: str, client: int | None = None) -> dict[str, Any]:
    """A parsed message of kind ``message``, checked against the round, run and (if given) client."""
    try:
        value = json.loads(data, object_pairs_hook=_no_duplicates(where))
    except (ValueError, UnicodeDecodeError):
        _fail(where, "not JSON")
    head = {"format": FORMAT, "version": VERSION, "message": message, "round": rnd, "config_digest": config_digest}
    if not isinstance(value, dict):
        _fail(where, "expected a JSON object")
    for key, want in head.items():
        if value.get(key) != want:
            _fail(where, f"field '{key}' is {value.get(key)!r}, expected {want!r}")
    body = _object({k: v for k, v in value.items() if k not in head}, FIELDS[message], where)
    if client is not None and body["client"] != client:
        _fail(where, f"written by client {body['client']}, expected client {client}")
    return body


def hexmap(values: dict[int, bytes]) -> dict[str, str]:
    return {str(k): v.hex() for k, v in sorted(values.items())}
