"""The public messages' strict JSON: round, run and client checked; wrong, missing, unknown and
duplicated fields named in one line."""

from __future__ import annotations

import json

import pytest

from supermask_cli.errors import SecureAggregationError
from supermask_cli.secagg import messages

KEY = "ab" * 32


def _keys(**over):
    body = {"client": 2, "num_examples": 17, "channel_public": KEY, "mask_public": KEY, "signature": "", **over}
    return messages.dumps("keys", 1, "dig", **body)


def _load(blob, **kw):
    return messages.loads(blob, "keys", where="'k.json'", rnd=kw.get("rnd", 1), config_digest="dig", client=kw.get("client", 2))


def test_round_trip():
    msg = _load(_keys())
    assert msg == {"client": 2, "num_examples": 17, "channel_public": bytes.fromhex(KEY), "mask_public": bytes.fromhex(KEY),
                   "signature": b""}


@pytest.mark.parametrize("blob,needle", [
    (_keys(), "field 'round' is 1, expected 2"),
    (_keys(client=3), "written by client 3, expected client 2"),
    (_keys(mask_public="ab" * 31), "field 'mask_public': expected 32 bytes of lowercase hex"),
    (_keys(mask_public="AB" * 32), "field 'mask_public': expected 32 bytes of lowercase hex"),
    (_keys(extra=1), "unknown fields ['extra']"),
    (b"[1]", "expected a JSON object"),
    (b"{", "not JSON"),
])
def test_bad_messages_named(blob, needle):
    kw = {"rnd": 2} if "round" in needle else {}
    with pytest.raises(SecureAggregationError) as err:
        _load(blob, **kw)
    assert str(err.value).startswith("'k.json': ") and needle in str(err.value)


def test_missing_and_duplicated_fields_named():
    body = json.loads(_keys())
    del body["mask_public"]
    with pytest.raises(SecureAggregationError, match=r"'k.json': missing fields \['mask_public'\]"):
        _load(json.dumps(body).encode())
    answer = messages.dumps("unmask", 1, "dig", client=2, self={"1": KEY}, pair={}).decode()
    twice = answer.replace(f'"self":{{"1":"{KEY}"}}', f'"self":{{"1":"{KEY}","1":"{KEY}"}}')
    assert twice != answer
    with pytest.raises(SecureAggregationError, match="'u.json': key '1' appears twice"):
        messages.loads(twice.encode(), "unmask", where="'u.json'", rnd=1, config_digest="dig", client=2)
    with pytest.raises(SecureAggregationError, match=r"field 'self': key '01' is not a client id"):
        messages.loads(answer.replace('"1":', '"01":').encode(), "unmask", where="'u.json'", rnd=1, config_digest="dig", client=2)
