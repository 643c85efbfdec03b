"""Hostile Flower messages: the ServerApp's real round logic (launch.flower_rounds) over a scripted
link whose nodes 10 and 11 are honest clients 0 and 1 and whose node 12 (client 2) sends one bad
message per variant. Every variant is refused with one line naming node 12, the run finishes with
the honest clients, and status.json says what happened. No flwr needed: the checks work on plain
values (test_flower_hostile_grid.py drives the same through real flwr messages)."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load as st_load, save as st_save

from conftest import tiny_config_dict
from supermask_cli import checkpoint, steps
from supermask_cli.config import load_config
from supermask_cli.launch import flower_rounds as rounds
from supermask_cli.launch import flower_wire as wire
from supermask_cli.launch.flower_wire import ArrayView, Outgoing, Record, Reply
from supermask_cli.layout import Layout

HONEST = {10: 0, 11: 1}
HOSTILE = 12  # client 2's node
SETTINGS = rounds.Settings(config="", overrides=[], workdir="", round_timeout=0.5, connect_timeout=0.3)


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def array_view(data: bytes) -> ArrayView:
    """What flwr's Array(np.frombuffer(data, uint8)) carries."""
    return ArrayView(dtype="uint8", shape=(len(data),), stype="numpy.ndarray", data=npy(np.frombuffer(data, np.uint8)))


@dataclasses.dataclass
class Material:
    config: Path
    base: Path  # a run dir with round 0 done and round 1's global and metrics
    uploads: dict[int, dict[int, bytes]]  # round -> client -> honest upload


@pytest.fixture(scope="module")
def material(tmp_path_factory, tiny_model, tiny_data) -> Material:
    home = tmp_path_factory.mktemp("flower_hostile")
    raw = tiny_config_dict(home / "base", tiny_model, tiny_data, "threshold")
    raw["federation"].update(num_clients=3, rounds=2, min_clients=2)
    raw["train"]["max_steps"] = 2
    config = home / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    cfg = load_config(config)
    layout = Layout(cfg.run_dir)
    steps.init(cfg)
    uploads: dict[int, dict[int, bytes]] = {}
    for rnd in (0, 1):
        if rnd:
            steps.aggregate(cfg, rnd=0)
        steps.evaluate(cfg, rnd=rnd)
        steps.write_participants(layout, cfg, rnd)
        for c in range(3):
            steps.train_client(cfg, c, rnd=rnd)
        uploads[rnd] = {c: Path(layout.client_path(rnd, c)).read_bytes() for c in range(3)}
    shutil.rmtree(layout.clients_dir(1))
    Path(layout.participants_path(1)).unlink()
    return Material(config=config, base=Path(cfg.run_dir), uploads=uploads)


def query_reply(node: int, mid: str, client) -> Reply:
    return Reply(node=node, reply_to=mid, kind=wire.QUERY, group="", error=None,
                 records={wire.NODE: Record(wire.CONFIG, {"client-id": client, "holds": ""})})


def train_reply(node: int, mid: str, m: Outgoing, data: bytes) -> Reply:
    meta = checkpoint.parse_meta(checkpoint.parse_header(data, "x")[0], "x")
    result = {"status": wire.OK, "holds": m.setup["digest"], "round": m.setup["round"],
              "num_examples": meta.num_examples, "steps": 2, "replayed": False, "mean_loss": 0.69, "seconds": 0.5}
    return Reply(node=node, reply_to=mid, kind=wire.TRAIN, group=m.group, error=None,
                 records={wire.RESULT: Record(wire.CONFIG, result), wire.UPLOAD: Record(wire.ARRAY, {wire.FILE: array_view(data)})})


class ScriptedLink:
    """A grid whose nodes answer at once; replies are delivered newest first, and node 12 may join late."""

    def __init__(self, material: Material, hostile: Callable, *, late: bool = False, claim: int = 2):
        self.material, self.hostile, self.late, self.claim = material, hostile, late, claim
        self.sent: dict[str, Outgoing] = {}
        self.inbox: list[Reply] = []
        self.deliveries = 0

    def node_ids(self):
        return {*HONEST, *([HOSTILE] if not self.late or self.deliveries else [])}

    def honest(self, node: int, mid: str, m: Outgoing, client: int) -> Reply:
        if m.kind == wire.QUERY:
            return query_reply(node, mid, client)
        return train_reply(node, mid, m, self.material.uploads[m.setup["round"]][client])

    def send(self, messages: list[Outgoing]) -> list[str]:
        ids = []
        for m in messages:
            mid = f"m{len(self.sent)}"
            self.sent[mid] = m
            ids.append(mid)
            if m.node in HONEST:
                self.inbox.append(self.honest(m.node, mid, m, HONEST[m.node]))
            else:
                self.inbox.extend(self.hostile(self, self.honest(m.node, mid, m, self.claim), m))
        return ids

    def receive(self, message_ids: list[str]) -> list[Reply]:
        out, self.inbox = self.inbox[::-1], []
        self.deliveries += 1
        return out


# --- the corpus: (id, phase, mutation of node 12's honest reply, words its refusal holds) ---------------

def on(kind: str, fn: Callable) -> Callable:
    """Apply ``fn(link, reply, m) -> [replies]`` to node 12's replies of one kind; the others stay honest."""
    return lambda link, reply, m: fn(link, reply, m) if m.kind == kind else [reply]


def records(**changes) -> Callable:
    def fn(link, reply, m):
        recs = {k: v for k, v in {**reply.records, **changes}.items() if v is not None}
        return [dataclasses.replace(reply, records=recs)]
    return fn


def items(name: str, **changes) -> Callable:
    def fn(link, reply, m):
        rec = reply.records[name]
        values = {k: v for k, v in {**rec.items, **changes}.items() if v is not DROP}
        return records(**{name: Record(rec.type, values)})(link, reply, m)
    return fn


DROP = object()


def upload(make: Callable[[Material, Outgoing], ArrayView]) -> Callable:
    def fn(link, reply, m):
        return records(**{wire.UPLOAD: Record(wire.ARRAY, {wire.FILE: make(link.material, m)})})(link, reply, m)
    return fn


def file_of(make: Callable[[Material], bytes], **result) -> Callable:
    def fn(link, reply, m):
        data = make(link.material)
        rec = reply.records[wire.RESULT]
        out = records(**{wire.UPLOAD: Record(wire.ARRAY, {wire.FILE: array_view(data)})})(link, reply, m)[0]
        return items(wire.RESULT, **result)(link, out, m) if result else [out]
    return fn


def with_nan(material: Material) -> bytes:
    data = material.uploads[1][2]
    header, _ = checkpoint.parse_header(data, "x")
    tensors = st_load(data)
    name = next(k for k, t in tensors.items() if t.is_floating_point())
    tensors[name] = tensors[name].clone().reshape(-1).index_fill(0, torch.tensor([0]), float("nan")).reshape(tensors[name].shape)
    return st_save(tensors, metadata=header["__metadata__"])


def with_meta(material: Material, **changes) -> bytes:
    data = material.uploads[1][2]
    header, _ = checkpoint.parse_header(data, "x")
    meta = json.loads(header["__metadata__"][checkpoint.META_KEY])
    meta.update(changes)
    return st_save(st_load(data), metadata={**header["__metadata__"], checkpoint.META_KEY: json.dumps(meta)})


class Untouchable:
    """Serialised data that must never be read: 50 MiB by its length, an error on any access."""

    def __len__(self):
        return 50 * 2**20 + 128

    def __getitem__(self, key):
        raise AssertionError("the upload's bytes were read before its size was checked")


def reply_to_other(link, reply, m):
    other = next(mid for mid, o in link.sent.items() if o.node == 10 and o.kind == m.kind)
    return [dataclasses.replace(reply, reply_to=other)]


Q, T = wire.QUERY, wire.TRAIN
CORPUS = [
    # query replies
    ("query-missing-record", on(Q, records(**{wire.NODE: None})), "missing record(s) node"),
    ("query-wrong-record-type", on(Q, records(**{wire.NODE: Record(wire.ARRAY, {})})), "is a array record, not config"),
    ("query-extra-record", on(Q, records(extra=Record(wire.CONFIG, {}))), "unexpected record(s) extra"),
    ("query-extra-key", on(Q, items(wire.NODE, admin=1)), "unexpected admin"),
    ("query-non-integer-id", on(Q, items(wire.NODE, **{"client-id": "two"})), "client-id 'two' is not an integer"),
    ("query-float-id", on(Q, items(wire.NODE, **{"client-id": 2.0})), "client-id 2.0 is not an integer"),
    ("query-bool-id", on(Q, items(wire.NODE, **{"client-id": True})), "client-id True is not an integer"),
    ("query-negative-id", on(Q, items(wire.NODE, **{"client-id": -1})), "client-id -1 is outside 0..2"),
    ("query-huge-id", on(Q, items(wire.NODE, **{"client-id": 10**18})), "is outside 0..2"),
    ("query-holds-not-digest", on(Q, items(wire.NODE, holds=b"\x00" * 32)), "is not a SHA-256 hex digest"),
    ("query-error", on(Q, lambda l, r, m: [dataclasses.replace(r, error="Traceback\nValueError: boom", records={})]),
     "the ClientApp failed: ValueError: boom"),
    ("query-wrong-kind", on(Q, lambda l, r, m: [dataclasses.replace(r, kind=T)]), "a 'train' reply to a 'query' message"),
    # train replies: records and fields
    ("train-missing-result", on(T, records(**{wire.RESULT: None})), "missing record(s) result"),
    ("train-missing-upload", on(T, records(**{wire.UPLOAD: None})), "missing record(s) upload"),
    ("train-upload-wrong-record-type", on(T, records(**{wire.UPLOAD: Record(wire.CONFIG, {"file": b"x"})})),
     "record 'upload' is a config record, not array"),
    ("train-result-wrong-record-type", on(T, records(**{wire.RESULT: Record(wire.METRIC, {"status": 1})})),
     "record 'result' is a metric record, not config"),
    ("train-extra-record", on(T, records(debug=Record(wire.CONFIG, {}))), "unexpected record(s) debug"),
    ("train-extra-result-key", on(T, items(wire.RESULT, weight=1000.0)), "unexpected weight"),
    ("train-missing-result-key", on(T, items(wire.RESULT, steps=DROP)), "missing steps"),
    ("train-unknown-status", on(T, items(wire.RESULT, status="maybe")), "is not one of ok, need-full, refused"),
    ("train-replayed-not-bool", on(T, items(wire.RESULT, replayed="no")), "replayed 'no' is not true or false"),
    ("refused-with-an-upload", on(T, items(wire.RESULT, status=wire.REFUSED, reason="no", num_examples=DROP, steps=DROP,
                                           replayed=DROP, mean_loss=DROP, seconds=DROP)), "over the 0-byte limit"),
    ("train-negative-examples", on(T, items(wire.RESULT, num_examples=-5)), "num_examples -5 is outside"),
    ("train-huge-examples", on(T, items(wire.RESULT, num_examples=10**12)), "num_examples 1000000000000 is outside"),
    ("train-examples-disagree-with-file", on(T, items(wire.RESULT, num_examples=7)), "its result says 7 examples"),
    ("train-bool-steps", on(T, items(wire.RESULT, steps=True)), "steps True is not an integer"),
    ("train-infinite-loss", on(T, items(wire.RESULT, mean_loss=float("inf"))), "mean_loss inf is not a finite"),
    ("train-nan-loss", on(T, items(wire.RESULT, mean_loss=float("nan"))), "mean_loss nan is not a finite"),
    # train replies: the upload array
    ("upload-float32", on(T, upload(lambda mat, m: ArrayView("float32", (4,), "numpy.ndarray", npy(np.zeros(4, np.float32))))),
     "a float32 array"),
    ("upload-2d", on(T, upload(lambda mat, m: ArrayView("uint8", (2, 2), "numpy.ndarray", npy(np.zeros((2, 2), np.uint8))))),
     "not a 1-D array"),
    ("upload-not-numpy", on(T, upload(lambda mat, m: ArrayView("uint8", (4,), "torch.Tensor", b"\x80\x04"))),
     "serialisation 'torch.Tensor'"),
    ("upload-huge-declared", on(T, upload(lambda mat, m: ArrayView("uint8", (50 * 2**20,), "numpy.ndarray", Untouchable()))),
     "52428800 bytes, over the"),
    ("upload-huge-data", on(T, upload(lambda mat, m: ArrayView("uint8", (10,), "numpy.ndarray", bytes(50 * 2**20)))),
     "serialised bytes for a declared 10-byte array"),
    ("upload-npy-disagrees", on(T, upload(lambda mat, m: ArrayView("uint8", (8,), "numpy.ndarray", npy(np.zeros(4, np.uint8)) + bytes(4)))),
     "does not hold exactly the declared"),
    ("upload-npy-pickle", on(T, upload(lambda mat, m: ArrayView("uint8", (1,), "numpy.ndarray", b"\x93NUMPY\x01\x00\x76\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }".ljust(128, b" ") + b"x"))),
     "does not hold exactly the declared"),
    # train replies: the file it carries
    ("file-nan", on(T, file_of(with_nan)), "holds NaN or Inf"),
    ("file-huge-num-examples", on(T, file_of(lambda mat: with_meta(mat, num_examples=10**9), num_examples=10**9)),
     "num_examples"),
    ("file-of-another-client", on(T, file_of(lambda mat: mat.uploads[1][1])), "uploaded a file of client 1"),
    ("file-replayed-round", on(T, file_of(lambda mat: mat.uploads[0][2])), "coded against another global"),
    ("file-garbage", on(T, file_of(lambda mat: b"\x80\x04\x95pickle")), "not a safetensors file"),
    # train replies: rounds and messages
    ("result-earlier-round", on(T, items(wire.RESULT, round=0)), "a result for an earlier round (0), this is round 1"),
    ("result-future-round", on(T, items(wire.RESULT, round=2)), "a result for a later round (2), this is round 1"),
    ("train-wrong-group", on(T, lambda l, r, m: [dataclasses.replace(r, group="0")]), "round group '0', not '1'"),
    ("train-error", on(T, lambda l, r, m: [dataclasses.replace(r, error="RuntimeError: CUDA out of memory", records={})]),
     "the ClientApp failed: RuntimeError: CUDA out of memory"),
    ("reply-to-another-nodes-message", on(T, reply_to_other), "sent to node 10"),
    ("reply-to-unknown-message", on(T, lambda l, r, m: [dataclasses.replace(r, reply_to="forged")]),
     "replied to message 'forged'"),
    ("need-full-with-an-upload", on(T, items(wire.RESULT, status=wire.NEED_FULL, num_examples=DROP, steps=DROP,
                                             replayed=DROP, mean_loss=DROP, seconds=DROP)), "over the 0-byte limit"),
]


def serve(material: Material, tmp_path: Path, link: ScriptedLink) -> tuple[int, dict, Path]:
    run_dir = tmp_path / "run"
    shutil.copytree(material.base, run_dir)
    cfg = load_config(material.config, [f"run_dir={run_dir}"])
    code = rounds.run(link, cfg, SETTINGS)
    return code, json.loads((run_dir / "flower" / "status.json").read_text()), run_dir


def aggregated(run_dir: Path) -> list[int]:
    meta = checkpoint.read_meta(str(run_dir / "round_002" / "global.safetensors"))
    return sorted(c.client for c in meta.aggregation.clients)


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(rounds, "POLL_SECONDS", 0.01)
    monkeypatch.setattr(rounds, "REDISCOVER_SECONDS", 0.05)


def test_the_corpus_is_large():
    assert len(CORPUS) >= 20 and len({v[0] for v in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize(("variant", "hostile", "words"), CORPUS, ids=[v[0] for v in CORPUS])
def test_a_hostile_reply_is_refused_and_the_honest_nodes_finish(material, tmp_path, variant, hostile, words):
    # Execute
    code, status, run_dir = serve(material, tmp_path, ScriptedLink(material, hostile))

    # Assert: done with clients 0 and 1; node 12 refused once per bad message, by name
    assert code == 0 and status["state"] == "done", status
    mine = [line for line in status["refused"] if line.startswith(f"node {HOSTILE}")]
    assert mine and all(words in line for line in mine[:1]), status["refused"]
    assert all("\n" not in line for line in status["refused"])
    assert not any(line.startswith("node 10") or line.startswith("node 11") for line in status["refused"])
    assert aggregated(run_dir) == [0, 1]
    assert not (run_dir / "round_001" / "clients" / "client_002.safetensors").exists()


def test_a_duplicate_reply_is_refused_and_the_first_one_used(material, tmp_path):
    code, status, run_dir = serve(material, tmp_path, ScriptedLink(material, on(T, lambda l, r, m: [r, r])))
    assert code == 0 and aggregated(run_dir) == [0, 1, 2]
    assert [line for line in status["refused"] if "not awaiting a reply" in line and line.startswith("node 12")], status


def test_a_late_claim_of_another_clients_id_is_refused(material, tmp_path):
    link = ScriptedLink(material, lambda l, r, m: [r], late=True, claim=1)
    code, status, run_dir = serve(material, tmp_path, link)
    assert code == 0 and aggregated(run_dir) == [0, 1]
    assert "node 12: says client-id=1, which node 11 already is" in status["refused"], status


def test_two_nodes_claiming_one_id_at_once_are_both_refused(material, tmp_path):
    # Without authenticated identities neither claim can be trusted: client 1 is lost, the round
    # falls under min_clients, and the run fails with one line saying so.
    code, status, run_dir = serve(material, tmp_path, ScriptedLink(material, lambda l, r, m: [r], claim=1))
    assert code == 2 and status["state"] == "failed"
    assert "round 1: 1 of 3 sampled clients uploaded, federation.min_clients is 2" in status["error"]
    assert {line.split(":")[0] for line in status["refused"]} == {"node 11", "node 12"}, status


def test_an_honest_federation_has_nothing_refused(material, tmp_path):
    code, status, run_dir = serve(material, tmp_path, ScriptedLink(material, lambda l, r, m: [r]))
    assert code == 0 and status == {"state": "done", "error": "", "refused": []}
    assert aggregated(run_dir) == [0, 1, 2]
    rows = [json.loads(line) for line in (run_dir / "flower" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1] and sorted(rows[0]["up"]) == ["0", "1", "2"]
