"""The ``filtered`` rule: whole-client outlier filtering against the global, then the mean."""

from __future__ import annotations

import json
import math

import torch
import yaml
from typer.testing import CliRunner

from supermask_cli import checkpoint
from supermask_cli.rules import outliers, surprise
from supermask_cli.cli import app
from supermask_cli.layout import Layout


def test_surprise_bernoulli_is_bits_per_weight_under_global_probs():
    global_ = {"probs/a": torch.tensor([0.5, 0.75])}
    client = {"mask/a": torch.tensor([True, False]), "head/w": torch.ones(3)}
    # -log2(0.5) + -log2(0.25) = 1 + 2 bits over 2 weights; the head is ignored
    assert surprise("bernoulli", client, global_) == 1.5


def test_surprise_threshold_is_fraction_of_flipped_bits():
    global_ = {"mask/a": torch.tensor([True, True, False, False])}
    assert surprise("threshold", {"mask/a": torch.tensor([True, False, True, False])}, global_) == 0.5


def test_surprise_scaling_is_rms_difference():
    global_ = {"scale/a": torch.ones(4)}
    client = {"scale/a": torch.tensor([1.0, 1.0, 3.0, 1.0])}
    assert math.isclose(surprise("scaling", client, global_), 1.0)  # sqrt(4 / 4)


def test_outliers_uses_median_plus_k_mad():
    # median 1.0, MAD 0.1 -> limit 1.3 with k = 3
    scores = torch.tensor([0.9, 1.0, 1.1, 1.0, 6.6, 1.29])
    assert outliers(scores, 3.0).tolist() == [False, False, False, False, True, False]


def test_outliers_spread_is_floored_when_honest_clients_agree_exactly():
    scores = torch.tensor([2.0, 2.0, 2.0, 2.05, 9.0])
    assert outliers(scores, 3.0).tolist() == [False, False, False, False, True]


def test_filtered_aggregate_drops_an_inverted_upload_and_records_why(tiny_config):
    # Prepare: 4 clients of a threshold run, client 3 uploads the inverse of its mask
    config = tiny_config("threshold", federation={"num_clients": 4, "rounds": 1, "aggregator": "filtered"},
                         train={"max_steps": 2, "lr": 1e-3})
    runner = CliRunner()
    assert runner.invoke(app, ["init", "-c", str(config)]).exit_code == 0
    for client in range(4):
        assert runner.invoke(app, ["train-client", "-c", str(config), "--client", str(client)]).exit_code == 0
    layout = Layout(yaml.safe_load(config.read_text())["run_dir"])
    gl = checkpoint.load_checkpoint(layout.global_path(0))
    bad = checkpoint.load_checkpoint(layout.client_path(0, 3), reference=gl)
    tensors = {k: (~v if k.startswith("mask/") else v) for k, v in bad.tensors.items()}
    meta = bad.meta.model_copy(update={"encoding": "packed", "coding_flip_rate": None})
    stored = checkpoint.encode_tensors(meta, tensors, gl)
    checkpoint.save_checkpoint(layout.client_path(0, 3), meta.model_copy(update={"mask_bits": checkpoint.payload_bits(stored)}),
                               stored, force=True)

    # Execute
    result = runner.invoke(app, ["aggregate", "-c", str(config)])

    # Assert: three clients aggregated, the inverted one dropped with its reason in the metadata
    assert result.exit_code == 0, result.output
    info = json.loads(runner.invoke(app, ["inspect", layout.global_path(1), "--json"]).output)
    assert [c["client"] for c in info["aggregation"]["clients"]] == [0, 1, 2]
    assert info["aggregation"]["rule"] == "filtered"
    [dropped] = info["aggregation"]["dropped"]
    assert dropped["file"].endswith("client_003.safetensors") and "outlier upload" in dropped["reason"]
