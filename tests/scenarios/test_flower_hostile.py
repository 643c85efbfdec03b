"""Hostile Flower messages: the ServerApp's real round logic (launch.flower_rounds) over a scripted
link (flower_scripted.py) whose nodes 10 and 11 are honest clients 0 and 1 and whose node 12
(client 2) sends one bad message per variant. Every variant is refused with one line naming node
12, the run finishes with the honest clients, and status.json says what happened. Also: identities
bound by a clients file, and quarantine (rejected/, asked again, a restart re-checks). No flwr
needed (test_flower_hostile_grid.py drives the defects through real flwr messages)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from flower_scripted import (
    HOSTILE,
    SETTINGS,
    ArrayView,
    Material,
    Outgoing,
    Record,
    ScriptedLink,
    aggregated,
    array_view,
    build_material,
    npy,
    serve,
)
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from supermask_cli import checkpoint
from supermask_cli.config import load_config
from supermask_cli.launch import flower_rounds as rounds
from supermask_cli.launch import flower_wire as wire


@pytest.fixture(scope="module")
def material(tmp_path_factory, tiny_model, tiny_data) -> Material:
    return build_material(tmp_path_factory.mktemp("flower_hostile"), tiny_model, tiny_data)

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
    ("file-of-another-client", on(T, file_of(lambda mat: mat.uploads[1][1])), "a file of client 1, not of client 2"),
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


# --- identities bound by the operator's clients file --------------------------------------------------

def clients_file(tmp_path: Path, nodes: dict) -> str:
    path = tmp_path / "clients.json"
    path.write_text(json.dumps({"nodes": {str(k): v for k, v in nodes.items()}}))
    return str(path)


def serve_with(material, tmp_path, link, nodes: dict) -> tuple[int, dict, Path]:
    return serve(material, tmp_path, link, dataclasses.replace(SETTINGS, clients_file=clients_file(tmp_path, nodes)))


def test_with_a_clients_file_a_node_claiming_another_id_is_refused_and_the_bound_node_is_used(material, tmp_path):
    # Node 12 answers first (replies arrive newest first) claiming client 1; the file binds node 11 to it
    link = ScriptedLink(material, lambda l, r, m: [r], claim=1)
    code, status, run_dir = serve_with(material, tmp_path, link, {10: 0, 11: 1, 12: 2})
    assert code == 0 and aggregated(run_dir) == [0, 1], status
    assert set(status["refused"]) == {f"node 12: says client-id=1, but the clients file {tmp_path / 'clients.json'} "
                                      "binds it to client 2"}  # asked at the start and again at the round's


def test_with_a_clients_file_an_unlisted_node_is_refused(material, tmp_path):
    code, status, run_dir = serve_with(material, tmp_path, ScriptedLink(material, lambda l, r, m: [r]), {10: 0, 11: 1})
    assert code == 0 and aggregated(run_dir) == [0, 1]
    assert set(status["refused"]) == {f"node 12: not in the clients file {tmp_path / 'clients.json'} (an unregistered node)"}


def test_without_a_clients_file_the_server_warns_that_ids_are_self_declared(material, tmp_path, capsys):
    serve(material, tmp_path, ScriptedLink(material, lambda l, r, m: [r]))
    assert "warning: no clients-file: client ids are what each SuperNode says" in capsys.readouterr().out


@pytest.mark.parametrize(("content", "words"), [
    ("[1, 2]", 'expected {"nodes"'),
    ('{"nodes": {"x": 0}}', "node id 'x' is not a non-negative integer"),
    ('{"nodes": {"10": 3}}', "node 10: client id 3 is outside 0..2"),
    ('{"nodes": {"10": true}}', "client id True is outside"),
    ('{"nodes": {"10": 0, "11": 0}}', "client 0 is bound to nodes 10 and 11"),
    ("{not json", "not JSON"),
])
def test_a_bad_clients_file_fails_the_run_with_one_line(material, tmp_path, content, words):
    path = tmp_path / "clients.json"
    path.write_text(content)
    settings = dataclasses.replace(SETTINGS, clients_file=str(path))
    code, status, _ = serve(material, tmp_path, ScriptedLink(material, lambda l, r, m: [r]), settings)
    assert code == 2 and status["state"] == "failed" and words in status["error"] and str(path) in status["error"]


# --- quarantine: a refused upload never enters clients/, the node is asked again, a restart re-checks --

def test_a_refused_upload_goes_to_rejected_with_its_reason(material, tmp_path):
    code, status, run_dir = serve(material, tmp_path, ScriptedLink(material, on(T, file_of(lambda mat: mat.uploads[0][2]))))
    assert code == 0 and aggregated(run_dir) == [0, 1]
    rejected = run_dir / "round_001" / "rejected"
    assert (rejected / "client_002.safetensors").read_bytes() == material.uploads[0][2]
    reason = (rejected / "client_002.reason.txt").read_text()
    assert reason.startswith("node 12 (client 2): was coded against another global") and reason.count("\n") == 1
    assert sum(line.startswith("node 12") for line in status["refused"]) == rounds.MAX_ASKS  # asked again, twice
    (dropped,) = checkpoint.read_meta(str(run_dir / "round_002" / "global.safetensors")).aggregation.dropped
    assert dropped.file == str(rejected / "client_002.safetensors") and dropped.reason == reason.strip()


def test_a_node_whose_first_upload_is_refused_is_asked_again(material, tmp_path):
    sent = []

    def bad_once(link, reply, m):
        sent.append(m)
        return file_of(lambda mat: mat.uploads[1][1])(link, reply, m) if len(sent) == 1 else [reply]

    code, status, run_dir = serve(material, tmp_path, ScriptedLink(material, on(T, bad_once)))
    assert code == 0 and aggregated(run_dir) == [0, 1, 2], status
    assert len(sent) == 2 and [l for l in status["refused"] if l.startswith("node 12")] == [
        "node 12 (client 2): a file of client 1, not of client 2"]
    assert checkpoint.read_meta(str(run_dir / "round_002" / "global.safetensors")).aggregation.dropped == []


def test_a_restart_rechecks_the_files_it_finds(material, tmp_path):
    # Prepare: an earlier run (or anyone with write access) left client 2's round-0 file as its round-1 upload
    run_dir = tmp_path / "run"
    shutil.copytree(material.base, run_dir)
    clients = run_dir / "round_001" / "clients"
    clients.mkdir()
    (clients / "client_002.safetensors").write_bytes(material.uploads[0][2])
    (clients / "client_000.safetensors").write_bytes(material.uploads[1][0])  # a good one stays

    # Execute
    cfg = load_config(material.config, [f"run_dir={run_dir}"])
    link = ScriptedLink(material, lambda l, r, m: [r])
    code = rounds.run(link, cfg, SETTINGS)

    # Assert: the bad file moved to rejected/, client 2 asked again, client 0 not asked, all three aggregated
    status = json.loads((run_dir / "flower" / "status.json").read_text())
    assert code == 0 and aggregated(run_dir) == [0, 1, 2], status
    assert (run_dir / "round_001" / "rejected" / "client_002.safetensors").read_bytes() == material.uploads[0][2]
    assert any(l.startswith("client 2's file in round 1:") and "moved to rejected/" in l for l in status["refused"])
    trained = [m.setup["client"] for m in link.sent.values() if m.kind == wire.TRAIN]
    assert sorted(trained) == [1, 2]
