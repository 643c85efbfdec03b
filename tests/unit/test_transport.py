"""The compact download: a client holding round R's global rebuilds round R+1's byte for byte."""

import json
import os

import pytest

from supermask_cli import checkpoint, report, steps, transport
from supermask_cli.config import load_config
from supermask_cli.errors import CheckpointError
from supermask_cli.layout import Layout

# (kind, federation overrides): every mask kind, streaming and stacked rules, a server step, unequal clients
CASES = [
    ("bernoulli", {"aggregator": "mean"}),
    ("bernoulli", {"aggregator": "median", "server_lr": 1.5}),
    ("threshold", {"aggregator": "capped", "max_client_share": 0.4, "partition": "dirichlet"}),
    ("threshold", {"aggregator": "trimmed_mean", "trim_ratio": 0.2}),
    ("scaling", {"aggregator": "mean", "partition": "dirichlet"}),
]


def _run(tiny_config, kind, federation):
    path = tiny_config(kind, federation={"num_clients": 3, "rounds": 1, **federation})
    cfg = load_config(path)
    steps.run(cfg)
    return cfg, Layout(cfg.run_dir)


def _inputs(layout):
    new = layout.global_path(1)
    clients = [open(p, "rb").read() for p in layout.client_files(0)]
    return open(new, "rb").read(), clients


@pytest.mark.parametrize("kind,federation", CASES)
def test_delta_rebuilds_the_next_global_byte_for_byte(tiny_config, kind, federation):
    cfg, layout = _run(tiny_config, kind, federation)
    new, clients = _inputs(layout)
    previous = checkpoint.load_checkpoint(layout.global_path(0))

    delta = transport.encode_delta(new, list(reversed(clients)))  # found by digest, in any order

    assert transport.apply_delta(cfg, previous, delta) == new


def test_masks_travel_as_a_delta_far_below_the_full_file_and_scaling_falls_back(tiny_config):
    cfg, layout = _run(tiny_config, "bernoulli", {})
    d = transport.download(cfg, layout, 1)
    assert d.is_delta and len(d.data) < d.full_bytes / 3  # tiny model: mostly headers and the head
    assert transport.download(cfg, layout, 0).is_delta is False  # no previous global: the full file
    metrics = json.loads(open(layout.metrics_path(1)).read())
    assert metrics["download_bytes"] == len(d.data)
    assert metrics["download_bits_per_weight"] == pytest.approx(len(d.data) * 8 / d.num_weights)
    round0 = json.loads(open(layout.metrics_path(0)).read())
    assert round0["download_bytes"] == os.path.getsize(layout.global_path(0))  # nothing to build on: the full file
    log = [json.loads(line) for line in open(layout.metrics_log).read().splitlines()]
    assert log[1]["download_bytes"] == len(d.data)
    table = report.table_rows(report.load_history(cfg.run_dir))
    assert table[1]["download_bytes"] == len(d.data) and table[1]["download_bits_per_weight"] > 0


def test_a_round_s_delta_is_rebuilt_once_per_process_until_a_file_changes(tiny_config, monkeypatch):
    cfg, layout = _run(tiny_config, "bernoulli", {})
    transport._VERIFIED.clear()
    calls = []
    real = transport.apply_delta
    monkeypatch.setattr(transport, "apply_delta", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = transport.download(cfg, layout, 1)
    second = transport.download(cfg, layout, 1)  # e.g. evaluate's download_metrics, then the launcher's send
    assert first.is_delta and second.data == first.data and len(calls) == 1
    other = cfg.model_copy(update={"federation": cfg.federation.model_copy(update={"server_lr": 2.0})})
    assert transport.download(other, layout, 1).is_delta is False and len(calls) == 2  # other settings: checked again
    client = layout.client_files(0)[0]
    data = bytearray(open(client, "rb").read())
    data[-1] ^= 1  # the upload changed since aggregation: its digest no longer matches, no delta
    open(client, "wb").write(bytes(data))
    assert transport.download(cfg, layout, 1).is_delta is False


def test_scaling_uploads_are_as_large_as_the_global_so_the_full_file_is_fetched(tiny_config):
    cfg, layout = _run(tiny_config, "scaling", {})
    d = transport.download(cfg, layout, 1)
    assert not d.is_delta and len(d.data) == d.full_bytes


def test_a_delta_for_another_global_or_another_contract_is_refused(tiny_config):
    cfg, layout = _run(tiny_config, "bernoulli", {})
    new, clients = _inputs(layout)
    delta = transport.encode_delta(new, clients)
    rebuilt = checkpoint.loads(new, "round1")
    with pytest.raises(CheckpointError, match="another global"):
        transport.apply_delta(cfg, rebuilt, delta)
    # a receiver whose contract differs (here the server step) rebuilds other bytes: refused, not used
    other = cfg.model_copy(update={"federation": cfg.federation.model_copy(update={"server_lr": 2.0})})
    with pytest.raises(CheckpointError, match="does not match"):
        transport.apply_delta(other, checkpoint.load_checkpoint(layout.global_path(0)), delta)


def test_a_missing_upload_means_no_delta(tiny_config):
    cfg, layout = _run(tiny_config, "threshold", {})
    new, clients = _inputs(layout)
    with pytest.raises(CheckpointError, match="not among the given files"):
        transport.encode_delta(new, clients[1:])
    os.remove(layout.client_files(0)[0])
    assert transport.download(cfg, layout, 1).is_delta is False


def test_receive_rebuilds_from_the_held_global_or_asks_for_the_full_file(tiny_config, tmp_path):
    cfg, layout = _run(tiny_config, "bernoulli", {})
    new, clients = _inputs(layout)
    digest = checkpoint.file_digest(new)
    delta = transport.encode_delta(new, clients)
    held = layout.global_path(0)

    assert transport.receive(cfg, held, delta, is_delta=True, digest=digest) == new
    assert transport.receive(cfg, str(tmp_path / "none"), delta, is_delta=True, digest=digest) is None
    assert transport.receive(cfg, layout.global_path(1), delta, is_delta=True, digest=digest) is None  # another global
    assert transport.receive(cfg, str(tmp_path / "none"), new, is_delta=False, digest=digest) == new
    with pytest.raises(CheckpointError, match="differs from the server's"):
        transport.receive(cfg, held, new[:-1] + bytes([new[-1] ^ 1]), is_delta=False, digest=digest)
