"""What is uploaded, aggregated, evaluated and exported is what the rules say: statistical checks
of sampled uploads, example weighting end to end through files, baked masks, every rule and server
step on unequal inputs, and the untrusted-input defects (self-reported counts, outlier floor,
file size)."""

from __future__ import annotations

import math
import os

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import tiny_config_dict
from supermask_cli.server_opt import ServerOptimizer
from supermask_cli import checkpoint, steps
from conftest import aggregate_stacked
from supermask_cli.rules import (
    MEDIAN_MULTIPLE,
    example_weights,
    outliers,
)
from supermask_cli.checkpoint import Checkpoint
from supermask_cli.config import load_config
from supermask_cli.errors import CheckpointError
from supermask_cli.layout import Layout
from supermask_cli.mask.functions import PROB_EPS
from supermask_cli.masked_model import bake_global, trainable_from_global, upload_tensors
from supermask_cli.model import load_base_model


def _config(tmp_path, tiny_model, tiny_data, kind: str, **sections):
    raw = tiny_config_dict(tmp_path / f"run_{kind}", tiny_model, tiny_data, kind)
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def _init(cfg):
    result, cfg = steps.init(cfg)
    return cfg, checkpoint.load_checkpoint(result.path)


def _base(cfg):
    return load_base_model(cfg.model.name, revision=None, num_labels=2, regression=False,
                           target_patterns=cfg.mask.target_modules, head_names=None, seed=cfg.seed)


def _write_client(cfg, gl: Checkpoint, client: int, num_examples: int, tensors: dict, encoding: str = "packed") -> str:
    """A client upload crafted with the checkpoint helpers, as train-client would write it."""
    meta = gl.meta.model_copy(update={
        "role": "client", "client": client, "num_examples": num_examples, "parent_digest": gl.digest,
        "aggregation": None, "encoding": "float" if gl.meta.kind == "scaling" else encoding,
    })
    if gl.meta.kind == "threshold" and encoding == "coded":
        flips = sum(int((tensors[f"mask/{n}"] != gl.tensors[f"mask/{n}"]).sum()) for n in gl.meta.targets)
        meta = meta.model_copy(update={"coding_flip_rate": flips / gl.meta.num_weights})
    stored = checkpoint.encode_tensors(meta, tensors, gl)
    meta = meta.model_copy(update={"mask_bits": checkpoint.payload_bits(stored)})
    path = Layout(cfg.run_dir).client_path(gl.meta.round, client)
    checkpoint.save_checkpoint(path, meta, stored)
    return path


def _head(gl: Checkpoint, value: float) -> dict[str, torch.Tensor]:
    return {f"head/{n}": torch.full(tuple(s), value) for n, s in gl.meta.head.items()}


def _half_mask(shape) -> torch.Tensor:
    """Ones on the first half of the flattened weight, zeros after."""
    flat = torch.zeros(math.prod(shape), dtype=torch.bool)
    flat[: flat.numel() // 2] = True
    return flat.view(*shape)


# ------------------------------------------------------------------------------ weighting (defect)


def test_example_weights_examples_uniform_and_bounded_hand_computed():
    counts = [10, 20, 30, 10_000_000]
    assert example_weights(counts, "examples").tolist() == [10, 20, 30, 10_000_000]
    assert example_weights(counts, "uniform").tolist() == [1, 1, 1, 1]
    # lower median of (10, 20, 30, 1e7) is 20; cap 3 × 20 = 60
    assert MEDIAN_MULTIPLE == 3.0
    assert example_weights(counts, "bounded").tolist() == [10, 20, 30, 60]
    # odd count: median 80, cap 240 — honest sizes within the multiple keep their weight
    assert example_weights([30, 80, 10, 95, 500], "bounded").tolist() == [30, 80, 10, 95, 240]
    assert example_weights([5, 7], "bounded", multiple=1.0).tolist() == [5, 5]
    with pytest.raises(ValueError, match="federation.weighting"):
        example_weights(counts, "votes")


def test_default_weighting_bounds_a_client_claiming_ten_million_examples(tmp_path, tiny_model, tiny_data):
    # Three honest scaling clients (32 examples, v = 1) and one claiming 10 M examples with v = 5.
    cfg, gl = _init(_config(tmp_path, tiny_model, tiny_data, "scaling", federation={"num_clients": 4, "rounds": 1}))
    assert cfg.federation.weighting == "bounded"
    for client, (n, v) in enumerate([(32, 1.0), (32, 1.0), (32, 1.0), (10_000_000, 5.0)]):
        scales = {f"scale/{name}": torch.full((t.out_features,), v) for name, t in gl.meta.targets.items()}
        _write_client(cfg, gl, client, n, {**scales, **_head(gl, v)})
    steps.aggregate(cfg, rnd=0)
    new = checkpoint.load_checkpoint(Layout(cfg.run_dir).global_path(1))
    # weights 32, 32, 32, min(1e7, 3 × 32): (96 × 1 + 96 × 5) / 192 = 3, not ≈ 5
    for key, value in new.tensors.items():
        assert torch.allclose(value, torch.full_like(value, 3.0)), key


@pytest.mark.parametrize("weighting, weights", [("examples", (10, 30)), ("bounded", (10, 30)), ("uniform", (1, 1))])
def test_unequal_example_counts_set_the_global_as_the_weighting_says(tmp_path, tiny_model, tiny_data, weighting, weights):
    # Bernoulli through files: client 0 (10 examples) keeps everything, client 1 (30) keeps half.
    cfg, gl = _init(_config(tmp_path, tiny_model, tiny_data, "bernoulli",
                            federation={"num_clients": 2, "rounds": 1, "weighting": weighting}))
    ones = {f"mask/{n}": torch.ones(t.shape, dtype=torch.bool) for n, t in gl.meta.targets.items()}
    half = {f"mask/{n}": _half_mask(t.shape) for n, t in gl.meta.targets.items()}
    _write_client(cfg, gl, 0, 10, {**ones, **_head(gl, 1.0)}, encoding="sparse")
    _write_client(cfg, gl, 1, 30, {**half, **_head(gl, 3.0)}, encoding="packed")
    steps.aggregate(cfg, rnd=0)
    new = checkpoint.load_checkpoint(Layout(cfg.run_dir).global_path(1))
    a, b = weights
    for name, target in gl.meta.targets.items():
        expected = ((a * 1.0 + b * _half_mask(target.shape).double()) / (a + b)).float().clamp(PROB_EPS, 1 - PROB_EPS)
        assert torch.allclose(new.tensors[f"probs/{name}"], expected, atol=1e-6), name
    for name in gl.meta.head:
        assert torch.allclose(new.tensors[f"head/{name}"], torch.tensor((a * 1.0 + b * 3.0) / (a + b)))


@pytest.mark.parametrize("kind", ["threshold", "scaling"])
def test_unequal_counts_and_server_lr_through_files(tmp_path, tiny_model, tiny_data, kind):
    # threshold: a 10-example client keeps, a 30-example client drops the first half -> dropped
    # (the server step passes votes through); scaling: weighted mean then g + 0.5·(mean − g).
    cfg, gl = _init(_config(tmp_path, tiny_model, tiny_data, kind,
                            federation={"num_clients": 2, "rounds": 1, "server_lr": 0.5}))
    for client, (n, value) in enumerate([(10, 1.0), (30, 3.0)]):
        if kind == "threshold":
            masks = {f"mask/{m}": (torch.ones(t.shape, dtype=torch.bool) if client == 0 else ~_half_mask(t.shape))
                     for m, t in gl.meta.targets.items()}
        else:
            masks = {f"scale/{m}": torch.full((t.out_features,), value) for m, t in gl.meta.targets.items()}
        _write_client(cfg, gl, client, n, {**masks, **_head(gl, value)})
    steps.aggregate(cfg, rnd=0)
    new = checkpoint.load_checkpoint(Layout(cfg.run_dir).global_path(1))
    for name, target in gl.meta.targets.items():
        if kind == "threshold":
            assert torch.equal(new.tensors[f"mask/{name}"], ~_half_mask(target.shape))
        else:  # mean (10 + 90) / 40 = 2.5 from 1: 1 + 0.5 × 1.5 = 1.75
            assert torch.allclose(new.tensors[f"scale/{name}"], torch.tensor(1.75))
    for name in gl.meta.head:
        old = gl.tensors[f"head/{name}"]
        assert torch.allclose(new.tensors[f"head/{name}"], old + 0.5 * (2.5 - old), atol=1e-6)


# -------------------------------------------------------------------- rules and server steps (pure)

# Four clients, unequal weights, one coordinate: values 0.9, 0.2, 0.6, 0.4 with weights 10, 40, 20, 30.
VALUES, WEIGHTS = [0.9, 0.2, 0.6, 0.4], [10.0, 40.0, 20.0, 30.0]
RULE_RESULTS = {
    "mean": 0.41,  # (9 + 8 + 12 + 12) / 100
    "filtered": 0.41,  # the mean of whoever is left
    "median": 0.4,  # cumulative weights 40, 70, ... cross 50 at 0.4
    "trimmed_mean": 0.48,  # β = 0.25 drops 0.2 and 0.9: (12 + 12) / 50
    "capped": 0.46,  # max share 0.3: weights 10, 22.5, 20, 22.5 -> 34.5 / 75
}


@pytest.mark.parametrize("rule", sorted(RULE_RESULTS))
@pytest.mark.parametrize("server_lr", [1.0, 0.5, 2.0])
def test_every_rule_and_server_step_on_unequal_inputs(rule, server_lr):
    clients = [{"scale/a": torch.tensor([v, 1.0 - v]), "head/w": torch.tensor([2 * v])} for v in VALUES]
    previous = {"scale/a": torch.tensor([0.8, 0.1]), "head/w": torch.tensor([1.0])}
    out = aggregate_stacked(clients, WEIGHTS, "scaling", rule, trim_ratio=0.25, max_share=0.3,
                            previous=previous, server=ServerOptimizer("sgd", server_lr))
    r = RULE_RESULTS[rule]
    mirrored = 1.0 - RULE_RESULTS["median"] if rule == "median" else 1.0 - r  # median of 1 − v is 0.6
    reduced = {"scale/a": torch.tensor([r, mirrored]), "head/w": torch.tensor([2 * r])}
    for key, value in reduced.items():
        expected = previous[key] + server_lr * (value - previous[key])
        assert torch.allclose(out[key], expected.float(), atol=1e-6), (key, out[key], expected)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


@pytest.mark.parametrize("server_lr, expected", [
    (1.0, 0.25),  # plain averaging
    (0.5, 1 / (1 + math.exp(-(_logit(0.99) + 0.5 * (_logit(0.25) - _logit(0.99)))))),  # halfway in score space: 0.85
    (3.0, PROB_EPS),  # overshoots far below 0: clamped
])
def test_bernoulli_server_step_moves_probs_from_the_previous_global_and_clamps(server_lr, expected):
    # masks 1, 0, 0, 0 with weights 10, 10, 10, 10 -> 0.25; previous probs 0.99; the step is in score (logit) space
    clients = [{"mask/a": torch.tensor([bit])} for bit in (True, False, False, False)]
    out = aggregate_stacked(clients, [10.0] * 4, "bernoulli", "mean", previous={"probs/a": torch.tensor([0.99])},
                            server=ServerOptimizer("sgd", server_lr))
    assert math.isclose(float(out["probs/a"]), expected, rel_tol=1e-5)


# ------------------------------------------------------------------------- sampled uploads (stats)


def _bernoulli_layers(tmp_path, tiny_model, tiny_data):
    cfg, gl = _init(_config(tmp_path, tiny_model, tiny_data, "bernoulli"))
    base = _base(cfg)
    layers, _ = trainable_from_global(base, gl, tau=cfg.mask.threshold, init_score=cfg.mask.init_score)
    head = {n: p for n, p in base.model.named_parameters() if n in gl.meta.head}
    return layers, head


def test_sampled_upload_density_matches_the_clients_probs_per_module(tmp_path, tiny_model, tiny_data):
    layers, head = _bernoulli_layers(tmp_path, tiny_model, tiny_data)
    probs = {name: 0.1 + 0.8 * i / (len(layers) - 1) for i, name in enumerate(layers)}  # 0.1 … 0.9
    with torch.no_grad():
        for name, layer in layers.items():
            layer.scores.fill_(math.log(probs[name] / (1 - probs[name])))
    up = upload_tensors(layers, head, "bernoulli", torch.Generator().manual_seed(0))
    for name, p in probs.items():
        mask = up[f"mask/{name}"]
        assert mask.dtype == torch.bool and mask.shape == layers[name].scores.shape
        n = mask.numel()
        # binomial: within 5 standard deviations (1 − p would be ≥ 16 sd away except at p = 0.5)
        assert abs(float(mask.float().mean()) - p) <= 5 * math.sqrt(p * (1 - p) / n), name


def test_sampled_upload_follows_each_weights_probability_not_its_complement(tmp_path, tiny_model, tiny_data):
    layers, head = _bernoulli_layers(tmp_path, tiny_model, tiny_data)
    patterns = {}
    with torch.no_grad():
        for name, layer in layers.items():
            patterns[name] = torch.rand(layer.scores.shape, generator=torch.Generator().manual_seed(1)) < 0.5
            layer.scores.copy_(torch.where(patterns[name], 6.0, -6.0))  # probs 0.9975 / 0.0025
    up = upload_tensors(layers, head, "bernoulli", torch.Generator().manual_seed(0))
    for name, pattern in patterns.items():
        assert float((up[f"mask/{name}"] == pattern).float().mean()) > 0.98, name
    assert all(torch.equal(up[f"head/{n}"], p.detach()) for n, p in head.items())


def test_train_client_uploads_a_sample_of_its_probs(tmp_path, tiny_model, tiny_data):
    # Frozen scores at init_density 0.3: the upload's density per module is ≈ 0.3 (1 − p would be 0.7).
    cfg, gl = _init(_config(tmp_path, tiny_model, tiny_data, "bernoulli", mask={"init_density": 0.3},
                            train={"lr": 1e-9, "head_lr": 1e-9, "max_steps": 1}))
    path = steps.train_client(cfg, 0, rnd=0).path
    up = checkpoint.load_checkpoint(path, reference=gl)
    for name, target in gl.meta.targets.items():
        n = math.prod(target.shape)
        assert abs(float(up.tensors[f"mask/{name}"].float().mean()) - 0.3) <= 5 * math.sqrt(0.21 / n), name


# ------------------------------------------------------------------------------ bake, eval, export


def _nontrivial_global(gl: Checkpoint) -> Checkpoint:
    """The global with masks (probs, scaling vectors) that change every target layer."""
    g = torch.Generator().manual_seed(3)
    tensors = dict(gl.tensors)
    for name, target in gl.meta.targets.items():
        if gl.meta.kind == "bernoulli":
            tensors[f"probs/{name}"] = 0.1 + 0.8 * torch.rand(tuple(target.shape), generator=g)
        elif gl.meta.kind == "threshold":
            tensors[f"mask/{name}"] = torch.rand(tuple(target.shape), generator=g) < 0.5
        else:
            tensors[f"scale/{name}"] = 0.5 + torch.rand(target.out_features, generator=g)
    return Checkpoint(meta=gl.meta, tensors=tensors, digest=gl.digest, path="memory")


def _expected_baked(kind: str, weight: torch.Tensor, bias: torch.Tensor, value: torch.Tensor):
    if kind == "scaling":
        return weight * value.unsqueeze(1), bias * value
    return weight * value.float(), bias


@pytest.mark.parametrize("kind", ["bernoulli", "threshold", "scaling"])
def test_bake_global_folds_the_mask_into_every_target_layer(tmp_path, tiny_model, tiny_data, kind):
    cfg, gl = _init(_config(tmp_path, tiny_model, tiny_data, kind))
    gl = _nontrivial_global(gl)
    gl.tensors.update({k: v + 0.5 for k, v in gl.tensors.items() if k.startswith("head/")})
    plain, base = _base(cfg).model, _base(cfg)
    with torch.no_grad():  # BERT initialises biases to 0, which would hide an unscaled bias
        for name in gl.meta.targets:
            for model in (plain, base.model):
                bias = model.get_submodule(name).bias
                bias.copy_(torch.linspace(-1.0, 1.0, bias.numel()))
    baked = bake_global(base, gl, "expected")
    group = {"bernoulli": "probs", "threshold": "mask", "scaling": "scale"}[kind]
    for name in gl.meta.targets:
        before, after = plain.get_submodule(name), baked.get_submodule(name)
        weight, bias = _expected_baked(kind, before.weight, before.bias, gl.tensors[f"{group}/{name}"])
        assert not torch.equal(after.weight, before.weight), name
        assert torch.allclose(after.weight, weight) and torch.allclose(after.bias, bias), name
    params = dict(baked.named_parameters())
    for name in gl.meta.head:  # the global's head, not the base model's
        assert torch.equal(params[name], gl.tensors[f"head/{name}"]), name


def test_bake_global_sample_mode_keeps_or_drops_each_weight_at_its_probability(tmp_path, tiny_model, tiny_data):
    cfg, gl = _init(_config(tmp_path, tiny_model, tiny_data, "bernoulli"))
    gl = _nontrivial_global(gl)
    plain = _base(cfg).model
    baked = bake_global(_base(cfg), gl, "sample", seed=5)
    for name in gl.meta.targets:
        w, b = plain.get_submodule(name).weight, baked.get_submodule(name).weight
        kept = b == w
        assert torch.all(kept | (b == 0)), name
        probs = gl.tensors[f"probs/{name}"]
        n = probs.numel()
        assert abs(float(kept.float().mean()) - float(probs.mean())) <= 5 * math.sqrt(0.25 / n), name
        assert float(probs[kept].mean()) > float(probs[~kept].mean()), name  # kept where probs are high


def test_export_and_eval_of_a_masked_global_differ_from_the_base_model(tmp_path, tiny_model, tiny_data):
    cfg, gl = _init(_config(tmp_path, tiny_model, tiny_data, "threshold"))
    masked = _nontrivial_global(gl)
    stored = checkpoint.encode_tensors(masked.meta, masked.tensors, None)
    path = str(tmp_path / "masked.safetensors")
    checkpoint.save_checkpoint(path, masked.meta, stored)
    steps.export(path, str(tmp_path / "export"))
    exported = load_file(str(tmp_path / "export" / "model.safetensors"))
    plain = _base(cfg).model
    for name in gl.meta.targets:
        weight = plain.get_submodule(name).weight
        assert torch.equal(exported[f"{name}.weight"], weight * masked.tensors[f"mask/{name}"].float()), name
    base_metrics, _ = steps.evaluate(cfg, rnd=0)
    masked_metrics, _ = steps.evaluate(cfg, checkpoint_path=path, out=str(tmp_path / "metrics.json"))
    assert masked_metrics["loss"] != base_metrics["loss"]  # exactly equal when the mask is not baked in


# ----------------------------------------------------------------------------- outlier floor (defect)


def test_outliers_keep_clients_that_learned_a_little_when_most_changed_nothing():
    assert outliers(torch.tensor([0.0, 0.0, 0.0, 1e-5, 2e-5]), 3.0).tolist() == [False] * 5


def test_outliers_still_flag_a_large_surprise_when_most_changed_nothing():
    flags = outliers(torch.tensor([0.0, 0.0, 0.0, 1e-5, 0.5]), 3.0).tolist()
    assert flags == [False, False, False, False, True]
    # just above and below median + k × the floor (1e-3)
    assert outliers(torch.tensor([0.0, 0.0, 0.0, 0.0029, 0.0031]), 3.0).tolist() == [False] * 4 + [True]


def test_outliers_limit_is_exclusive_and_the_median_share_floor_is_one_percent():
    # median 0, spread floored at min_spread 0.25: limit 0 + 2 × 0.25 = 0.5 exactly, not an outlier
    assert outliers(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.5]), 2.0, min_spread=0.25).tolist() == [False] * 5
    # median 1, MAD 0: spread 1% of the median, limit 1.03
    assert outliers(torch.tensor([1.0, 1.0, 1.0, 1.02, 1.05]), 3.0).tolist() == [False] * 4 + [True]


# ------------------------------------------------------------------------------- file size (defect)


@pytest.mark.parametrize("kind, encodings", [
    ("bernoulli", ["none", "packed", "coded", "sparse"]),
    ("threshold", ["none", "packed", "coded", "sparse"]),
    ("scaling", ["float"]),
])
def test_every_honest_client_encoding_fits_the_size_cap(tmp_path, tiny_model, tiny_data, kind, encodings):
    # bernoulli: probs 0.999 (the clamp) and an all-zero upload, ≈ 10 bits per weight when coded
    cfg, gl = _init(_config(tmp_path, tiny_model, tiny_data, kind, mask={"init_density": 0.999},
                            federation={"num_clients": 4}))
    cap = checkpoint.max_client_bytes(gl.meta)
    g = torch.Generator().manual_seed(0)
    for client, encoding in enumerate(encodings):
        if kind == "scaling":
            tensors = {f"scale/{n}": torch.rand(t.out_features, generator=g) for n, t in gl.meta.targets.items()}
        elif kind == "bernoulli":  # mostly zeros: the worst case for the coded encodings (≈ 10 bits a weight)
            tensors = {f"mask/{n}": (torch.arange(math.prod(t.shape)) % 97 == 0).view(*t.shape)
                       for n, t in gl.meta.targets.items()}
        else:
            tensors = {f"mask/{n}": torch.rand(tuple(t.shape), generator=g) < 0.5 for n, t in gl.meta.targets.items()}
        path = _write_client(cfg, gl, client, 32, {**tensors, **_head(gl, 0.0)}, encoding=encoding)
        size = len(open(path, "rb").read())
        assert size <= cap, (encoding, size, cap)
        back = checkpoint.load_checkpoint(path, reference=gl)  # an all-zero mask codes to an empty ANS stream
        assert all(torch.equal(back.tensors[k], v) for k, v in tensors.items()), encoding
    none_size = math.prod(next(iter(gl.meta.targets.values())).shape)
    assert cap < checkpoint.MAX_FILE_BYTES and cap >= none_size


def test_an_all_zero_mask_codes_to_an_empty_stream_and_round_trips(tmp_path, tiny_model, tiny_data):
    cfg, gl = _init(_config(tmp_path, tiny_model, tiny_data, "bernoulli"))
    zeros = {f"mask/{n}": torch.zeros(tuple(t.shape), dtype=torch.bool) for n, t in gl.meta.targets.items()}
    path = _write_client(cfg, gl, 0, 32, {**zeros, **_head(gl, 0.0)}, encoding="coded")
    back = checkpoint.load_checkpoint(path, reference=gl)
    assert all(not back.tensors[k].any() for k in zeros)


def test_max_client_bytes_is_a_few_bytes_per_weight_for_minilm_sized_metadata(tmp_path, tiny_model, tiny_data):
    cfg, gl = _init(_config(tmp_path, tiny_model, tiny_data, "bernoulli"))
    targets = {f"encoder.layer.{i}.m{j}": checkpoint.TargetMeta(shape=[384, 1536], out_features=384)
               for i in range(6) for j in range(6)}
    meta = gl.meta.model_copy(update={"targets": targets})
    cap = checkpoint.max_client_bytes(meta)
    assert meta.num_weights * 2 < cap < meta.num_weights * 2 + 2 * 1024**2  # ≈ 42 MB, not 8 GiB


def test_an_oversized_client_file_is_refused_before_parsing(tmp_path, tiny_model, tiny_data):
    cfg, gl = _init(_config(tmp_path, tiny_model, tiny_data, "bernoulli", federation={"num_clients": 2}))
    ones = {f"mask/{n}": torch.ones(t.shape, dtype=torch.bool) for n, t in gl.meta.targets.items()}
    _write_client(cfg, gl, 0, 32, {**ones, **_head(gl, 0.0)})
    big = Layout(cfg.run_dir).client_path(0, 1)
    cap = checkpoint.max_client_bytes(gl.meta)
    with open(big, "wb") as handle:  # a header length within limits, then junk past the cap
        handle.write((16).to_bytes(8, "little") + b"{}" + b" " * (cap - 10 + 1))
    steps.aggregate(cfg, rnd=0)  # the round goes on without it; the file is quarantined unread
    meta = checkpoint.read_meta(Layout(cfg.run_dir).global_path(1))
    assert [c.client for c in meta.aggregation.clients] == [0]
    (dropped,) = meta.aggregation.dropped
    assert "\n" not in dropped.reason and big in dropped.reason and f"over the {cap}-byte limit" in dropped.reason
    assert not os.path.exists(big) and not os.path.exists(Layout(cfg.run_dir).rejected_path(0, 1))
    big = Layout(cfg.run_dir).rejected_path(0, 1)
    with open(big, "wb") as handle:
        handle.write((16).to_bytes(8, "little") + b"{}" + b" " * (cap - 10 + 1))
    with pytest.raises(CheckpointError, match="byte limit"):
        checkpoint.read_meta(big, max_bytes=cap)


# ------------------------------------------------------------------------------------ head training


def test_train_client_moves_the_head_by_its_own_learning_rate(tmp_path, tiny_model, tiny_data):
    # The learning tests freeze the head; here the scores are frozen and the head must move.
    cfg, gl = _init(_config(tmp_path, tiny_model, tiny_data, "threshold",
                            train={"lr": 1e-9, "head_lr": 1e-2, "max_steps": 2}))
    up = checkpoint.load_checkpoint(steps.train_client(cfg, 0, rnd=0).path, reference=gl)
    for name in gl.meta.head:  # Adam moves each parameter by about lr per step
        assert float((up.tensors[f"head/{name}"] - gl.tensors[f"head/{name}"]).abs().max()) > 5e-3, name
    assert torch.equal(up.tensors[f"mask/{next(iter(gl.meta.targets))}"], gl.tensors[f"mask/{next(iter(gl.meta.targets))}"])


def test_threshold_upload_keeps_a_score_exactly_at_the_threshold_as_training_does(tmp_path, tiny_model, tiny_data):
    cfg, gl = _init(_config(tmp_path, tiny_model, tiny_data, "threshold"))
    base = _base(cfg)
    layers, _ = trainable_from_global(base, gl, tau=cfg.mask.threshold, init_score=cfg.mask.init_score)
    with torch.no_grad():
        for layer in layers.values():
            layer.scores.fill_(cfg.mask.threshold)
            layer.scores[0, 0] = cfg.mask.threshold - 1e-4
    up = upload_tensors(layers, {}, "threshold", torch.Generator())
    for name, layer in layers.items():
        assert torch.equal(up[f"mask/{name}"], layer.current_mask().bool()), name
        assert int(up[f"mask/{name}"].sum()) == layer.scores.numel() - 1, name
