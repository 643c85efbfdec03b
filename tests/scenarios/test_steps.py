"""The step API's run-level contracts: the shared pool, the data source, seeds, participants,
stragglers, weights after dropped files, and export's replacement of an old directory."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest
import torch

from conftest import tiny_config_dict
from supermask_cli import checkpoint, data, steps
from supermask_cli.config import config_from_dict
from supermask_cli.errors import SupermaskError
from supermask_cli.layout import Layout


def make_cfg(tmp_path, tiny_model, tiny_data, kind="bernoulli", **sections):
    raw = tiny_config_dict(tmp_path / "run", tiny_model, tiny_data, kind)
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw, "test")


def with_data(cfg, **values):
    return cfg.model_copy(update={"data": cfg.data.model_copy(update=values)})


# --------------------------------------------------------------------------------- the shared pool


def test_a_client_with_another_pool_is_refused(tmp_path, tiny_model, tiny_data):
    cfg = make_cfg(tmp_path, tiny_model, tiny_data)
    result, cfg = steps.init(cfg)
    assert result.pool is not None and result.pool.num_examples == 96 and result.pool.source == "local"
    with pytest.raises(SupermaskError, match="client 0: its training pool \\(50 examples\\) differs"):
        steps.train_client(with_data(cfg, max_train_examples=50), 0)
    other = tmp_path / "other.tsv"
    rows = tiny_data[0].read_text().splitlines()
    other.write_text("\n".join([rows[0], *rows[2:], rows[1]]) + "\n")  # same rows, another order
    with pytest.raises(SupermaskError, match="differs from the one recorded at init"):
        steps.train_client(with_data(cfg, train_file=str(other)), 1)
    steps.train_client(cfg, 2)  # the recorded pool trains


def test_source_auto_is_decided_once_at_init(tmp_path, tiny_model, tiny_data, monkeypatch):
    cfg = make_cfg(tmp_path, tiny_model, tiny_data, data={"source": "auto"})
    _, resolved = steps.init(cfg)
    assert resolved.data.source == "local"
    assert "source: local" in (tmp_path / "run" / "config.yaml").read_text()
    # later the hub answers on a client machine: the run's recorded choice still holds
    monkeypatch.setattr(data, "hub_available", lambda timeout=3.0: True)
    monkeypatch.setattr(data, "load_hub_split", lambda *a, **k: pytest.fail("the hub must not be read"))
    steps.train_client(cfg, 0)


def test_auto_falls_back_whole_when_the_hub_answers_but_fails(tmp_path, tiny_model, tiny_data, monkeypatch):
    monkeypatch.setattr(data, "hub_available", lambda timeout=3.0: True)
    calls = []

    def broken(task, split):
        calls.append(split)
        raise ConnectionError("reset by peer")

    monkeypatch.setattr(data, "load_hub_split", broken)
    result, resolved = steps.init(make_cfg(tmp_path, tiny_model, tiny_data, data={"source": "auto"}))
    assert calls and resolved.data.source == "local" and result.pool.source == "local"


def test_hub_failures_and_hub_without_task_are_one_line_errors(tmp_path, tiny_model, tiny_data, monkeypatch):
    monkeypatch.setattr(data, "load_hub_split", lambda task, split: (_ for _ in ()).throw(TimeoutError("slow")))
    with pytest.raises(SupermaskError, match="loading sst2/train from the hub failed \\(TimeoutError"):
        steps.init(make_cfg(tmp_path, tiny_model, tiny_data, data={"source": "hub"}))
    cfg = make_cfg(tmp_path, tiny_model, tiny_data, data={"source": "hub", "text_fields": ["sentence"]})
    cfg = cfg.model_copy(update={"task": None})
    with pytest.raises(SupermaskError, match="data.source is 'hub' but no GLUE task is set"):
        steps.init(cfg)


# ------------------------------------------------------------------------------------------ seeds


def test_the_upload_does_not_reuse_the_training_draws(tmp_path, tiny_model, tiny_data):
    cfg = make_cfg(tmp_path, tiny_model, tiny_data, train={"lr": 1e-12, "head_lr": 1e-12, "max_steps": 1},
                   mask={"init_density": 0.9})
    _, cfg = steps.init(cfg)
    gl = steps.load_global(Layout(cfg.run_dir).global_path(0))
    result = steps.train_client(cfg, 1)
    upload = checkpoint.load_checkpoint(result.path, reference=gl)
    training = torch.Generator().manual_seed(steps.derive_seed(cfg.seed, 0, 1))
    same = [name for name in gl.meta.targets
            if torch.equal(torch.bernoulli(gl.tensors[f"probs/{name}"], generator=training).bool(),
                           upload.tensors[f"mask/{name}"])]
    assert same == [], "the upload repeats the training stream's draws"
    density = upload.density()
    assert 0.88 < density < 0.92  # still sampled from the client's probs


# ------------------------------------------------------------------------------------ participants


def test_clients_per_round_trains_only_the_sampled_clients(tmp_path, tiny_model, tiny_data):
    cfg = make_cfg(tmp_path, tiny_model, tiny_data, "threshold",
                   federation={"num_clients": 5, "rounds": 2, "clients_per_round": 2})
    summaries = steps.run(cfg)
    layout = Layout(cfg.run_dir)
    for rnd in (0, 1):
        chosen = steps.read_participants(layout.participants_path(rnd))
        assert chosen == steps.sampled(cfg, rnd) and len(chosen) == 2
        assert sorted(c.client for c in summaries[rnd].clients) == chosen
        assert [c.client for c in summaries[rnd].upload.clients] == chosen
    assert steps.read_participants(layout.participants_path(2)) == steps.sampled(cfg, 2)
    assert steps.sampled(cfg, 0) != steps.sampled(cfg, 1) or steps.sampled(cfg, 1) != steps.sampled(cfg, 2)

    outsider = next(c for c in range(5) if c not in steps.sampled(cfg, 0))
    with pytest.raises(SupermaskError, match=f"client {outsider} is not sampled for round 0"):
        steps.train_client(cfg, outsider, rnd=0, out=str(tmp_path / "x.safetensors"))
    # an upload claiming to be from an unsampled client is refused by aggregate, naming it
    gl = steps.load_global(layout.global_path(0))
    honest = checkpoint.load_checkpoint(layout.client_path(0, steps.sampled(cfg, 0)[0]), reference=gl)
    meta = honest.meta.model_copy(update={"client": outsider})
    forged = tmp_path / "forged.safetensors"
    forged.write_bytes(checkpoint.serialize(meta, checkpoint.encode_tensors(meta, honest.tensors, gl)))
    with pytest.raises(SupermaskError, match=f"client {outsider} was not sampled for round 0"):
        steps.aggregate(cfg, rnd=0, client_paths=[str(forged)], out=str(tmp_path / "g.safetensors"))
    # ... and, dropped into the round's inbox, quarantined while the sampled clients' round goes on
    shutil.copy(forged, layout.client_path(0, outsider))
    steps.aggregate(cfg, rnd=0, out=str(tmp_path / "g.safetensors"))
    assert not os.path.exists(layout.client_path(0, outsider))
    assert f"client {outsider} was not sampled for round 0" in open(layout.rejected_reason_path(0, outsider)).read()
    assert [c.client for c in checkpoint.read_meta(str(tmp_path / "g.safetensors")).aggregation.clients] == steps.sampled(cfg, 0)


# -------------------------------------------------------------------------------------- stragglers


def test_wait_aggregates_who_arrived_and_records_the_missing(tmp_path, tiny_model, tiny_data):
    cfg = make_cfg(tmp_path, tiny_model, tiny_data, "threshold", federation={"num_clients": 3, "min_clients": 2})
    _, cfg = steps.init(cfg)
    layout = Layout(cfg.run_dir)
    steps.train_client(cfg, 0)
    late = tmp_path / "late.safetensors"
    steps.train_client(cfg, 1, out=str(late))

    start = time.monotonic()
    with pytest.raises(SupermaskError, match=r"round 0: only 1 valid client file\(s\).*missing clients: \[1, 2\]"):
        steps.aggregate(cfg, rnd=0, wait=0.5)
    assert time.monotonic() - start >= 0.5

    def arrive():
        time.sleep(1.0)
        os.replace(late, layout.client_path(0, 1))

    thread = threading.Thread(target=arrive)
    thread.start()
    result = steps.aggregate(cfg, rnd=0, wait=4)
    thread.join()
    assert [c.client for c in result.clients] == [0, 1] and result.missing == [2]
    assert checkpoint.read_meta(layout.global_path(1)).aggregation.missing == [2]


# --------------------------------------------------------------------------- weights after drops


def test_capped_weights_are_recomputed_after_a_dropped_file(tmp_path, tiny_model, tiny_data):
    cfg = make_cfg(tmp_path, tiny_model, tiny_data, "scaling", train={"lr": 0.05},
                   federation={"num_clients": 3, "partition": "dirichlet", "dirichlet_alpha": 0.3,
                               "aggregator": "capped", "max_client_share": 0.4})
    _, cfg = steps.init(cfg)
    layout = Layout(cfg.run_dir)
    results = [steps.train_client(cfg, c) for c in range(3)]
    assert len({r.num_examples for r in results}) == 3
    gl = steps.load_global(layout.global_path(0))
    bad = checkpoint.load_checkpoint(layout.client_path(0, 2), reference=gl)
    tensors = {k: v.clone() for k, v in bad.tensors.items()}
    head = next(k for k in tensors if k.startswith("head/"))
    tensors[head].view(-1)[0] = float("nan")  # metadata valid, decoding fails
    os.remove(layout.client_path(0, 2))
    broken = tmp_path / "client_002.safetensors"
    broken.write_bytes(checkpoint.serialize(bad.meta, checkpoint.encode_tensors(bad.meta, tensors, gl)))
    paths = [layout.client_path(0, 0), layout.client_path(0, 1)]
    skipped = steps.aggregate(cfg, rnd=0, client_paths=[*paths, str(broken)], skip_invalid=True,
                              out=str(tmp_path / "skipped.safetensors"))
    assert len(skipped.dropped) == 1
    clean = steps.aggregate(cfg, rnd=0, client_paths=paths, out=str(tmp_path / "clean.safetensors"))
    a = checkpoint.load_checkpoint(skipped.path).tensors
    b = checkpoint.load_checkpoint(clean.path).tensors
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------- export


def test_export_force_keeps_the_old_directory_until_the_new_one_is_in_place(tmp_path, tiny_model, tiny_data, monkeypatch):
    from supermask_cli.steps import inspection

    cfg = make_cfg(tmp_path, tiny_model, tiny_data, "threshold")
    result, cfg = steps.init(cfg)
    out = tmp_path / "exported"
    steps.export(result.path, str(out), cfg=cfg)
    before = sorted(os.listdir(out))
    (out / "marker").write_text("old")
    real = os.replace

    def failing(src, dst):
        if os.path.basename(str(src)).startswith(".export-") and not os.path.basename(str(src)).startswith(".export-old"):
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(inspection.os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        steps.export(result.path, str(out), cfg=cfg, force=True)
    assert (out / "marker").read_text() == "old" and sorted(os.listdir(out)) == sorted([*before, "marker"])
    monkeypatch.setattr(inspection.os, "replace", real)
    steps.export(result.path, str(out), cfg=cfg, force=True)
    assert sorted(os.listdir(out)) == before
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".export")]
