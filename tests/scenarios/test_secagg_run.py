"""`supermask run` with secure aggregation against the same run in plaintext: the global's mask
part is identical, its head within the fixed point's half step; uploads are masked; `aggregate`
waits for the unmask answers; inspect says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from supermask_cli import checkpoint, steps
from supermask_cli.cli import app
from supermask_cli.config import load_config
from supermask_cli.layout import Layout
from supermask_cli.secagg.encoding import FIXED


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the default secrets directories live under ~
    return tmp_path / "home"


@pytest.mark.parametrize("kind", ["threshold", "bernoulli", "scaling"])
def test_secure_run_global_matches_the_plaintext_run(kind, tiny_config, tmp_path, home):
    # Prepare: the same 3 clients and 1 round, with and without secure aggregation
    plain_cfg = load_config(tiny_config(kind, federation={"rounds": 1}))
    secure_cfg = plain_cfg.model_copy(update={
        "run_dir": str(tmp_path / "secure"),
        "secure_aggregation": plain_cfg.secure_aggregation.model_copy(update={"enabled": True})})
    # Execute
    steps.run(plain_cfg)
    steps.run(secure_cfg)
    # Assert: uploads masked, the global's mask part bit-identical, the head within the fixed point
    layout = Layout(secure_cfg.run_dir)
    upload = checkpoint.read_meta(layout.client_path(0, 1))
    assert upload.encoding == "masked" and upload.secure_aggregation.peers == [0, 2]
    assert upload.bits_per_weight > 1  # k bits per value, not a coded mask
    plain = checkpoint.load_checkpoint(Layout(plain_cfg.run_dir).global_path(1))
    secure = checkpoint.load_checkpoint(layout.global_path(1))
    assert set(plain.tensors) == set(secure.tensors)
    assert [c.client for c in secure.meta.aggregation.clients] == [0, 1, 2]
    for key, value in plain.tensors.items():
        if key.startswith(("head/", "scale/")):  # fixed point
            rounding = 2 * torch.finfo(torch.float32).eps * float(value.abs().max())
            assert (secure.tensors[key].double() - value.double()).abs().max() <= FIXED.resolution / 2 + rounding, key
        else:  # masks and probs: exact
            assert torch.equal(secure.tensors[key], value), key
    assert not torch.equal(plain.tensors[next(k for k in plain.tensors if k.startswith("head/"))],
                           checkpoint.load_checkpoint(Layout(plain_cfg.run_dir).global_path(0)).tensors[
                               next(k for k in plain.tensors if k.startswith("head/"))])  # the head did train


def test_aggregate_waits_for_unmask_answers_and_inspect_reports_a_masked_upload(tiny_config, tmp_path, home):
    path = tiny_config("threshold", federation={"rounds": 1}, secure_aggregation={"enabled": True})
    cfg = load_config(path)
    steps.init(cfg)
    for c in range(3):
        steps.secure.publish_keys(cfg, c, 0)
    for c in range(3):
        steps.secure.share_keys(cfg, c, 0)
    for c in (0, 1):  # client 2 drops out before training
        steps.train_client(cfg, c, rnd=0)
    result = CliRunner().invoke(app, ["aggregate", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "waiting: round 0: 0 of the 2 unmask answers needed are in; waiting for `supermask secagg unmask` of clients 0, 1" in result.output
    assert not Path(Layout(cfg.run_dir).global_path(1)).exists()
    from supermask_cli.steps.progress import progress

    shown = progress(cfg, rnd=0)[0].as_dict()["secure_aggregation"]
    assert shown == {"keys": [0, 1, 2], "shares": [0, 1, 2], "unmask": [], "survivors": [0, 1]}
    info = json.loads(CliRunner().invoke(app, ["inspect", str(Layout(cfg.run_dir).client_path(0, 0)), "--json"]).output)
    assert info["encoding"] == "masked" and info["secure_aggregation"] is True and info["density"] is None
    for c in (0, 1):
        assert CliRunner().invoke(app, ["secagg", "unmask", "--config", str(path), "--client", str(c)]).exit_code == 0
    result = CliRunner().invoke(app, ["aggregate", "--config", str(path)])
    assert result.exit_code == 0, result.output
    gl = checkpoint.read_meta(Layout(cfg.run_dir).global_path(1))
    assert [c.client for c in gl.aggregation.clients] == [0, 1] and gl.aggregation.missing == [2]


def test_client_level_privacy_adds_its_noise_after_unmasking(tiny_config, tmp_path, home):
    # Prepare: client-level DP without noise (z = 0), so that both runs are deterministic
    privacy = {"mode": "client", "noise_multiplier": 0.0, "max_flips": 64, "client_clip": 0.05}
    plain_cfg = load_config(tiny_config("threshold", federation={"rounds": 1}, privacy=privacy))
    secure_cfg = plain_cfg.model_copy(update={
        "run_dir": str(tmp_path / "secure"),
        "secure_aggregation": plain_cfg.secure_aggregation.model_copy(update={"enabled": True})})
    # Execute
    steps.run(plain_cfg)
    steps.run(secure_cfg)
    # Assert: the bounded mask part identical; the head clipped by the clients themselves, within
    # the clip's rounding margin of the server-clipped plaintext head
    plain = checkpoint.load_checkpoint(Layout(plain_cfg.run_dir).global_path(1))
    secure = checkpoint.load_checkpoint(Layout(secure_cfg.run_dir).global_path(1))
    before = checkpoint.load_checkpoint(Layout(plain_cfg.run_dir).global_path(0))
    moved = 0.0
    for key, value in plain.tensors.items():
        if key.startswith("head/"):
            assert (secure.tensors[key].double() - value.double()).abs().max() <= 1e-6, key
            moved = max(moved, float((value - before.tensors[key]).abs().max()))
        else:
            assert torch.equal(secure.tensors[key], value), key
    assert 0 < moved <= 0.05  # the head moved, by at most the clip
