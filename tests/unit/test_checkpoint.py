"""Tests for supermask_cli.checkpoint: bit-exact round trips, file contents, overwrite rules, URLs."""

from __future__ import annotations

import json
import uuid

import pytest
import torch
import yaml

from supermask_cli import checkpoint, coding
from supermask_cli import steps
from supermask_cli.steps.training import preferred_encoding
from supermask_cli.checkpoint import FileMeta, load_checkpoint, loads, save_checkpoint, serialize
from supermask_cli.config import load_config
from supermask_cli.errors import CheckpointError, SupermaskError

KINDS = ("bernoulli", "threshold", "scaling")
ALLOWED_GROUPS = ("probs/", "mask/", "code/", "scale/", "head/")


@pytest.fixture(scope="module")
def globals_by_kind(tmp_path_factory, tiny_model, tiny_data):
    """kind -> (init result, loaded global checkpoint, resolved config)."""
    from conftest import tiny_config_dict

    root = tmp_path_factory.mktemp("ckpt_globals")
    out = {}
    for kind in KINDS:
        path = root / f"{kind}.yaml"
        path.write_text(yaml.safe_dump(tiny_config_dict(root / f"run_{kind}", tiny_model, tiny_data, kind)))
        result, cfg = steps.init(load_config(path))
        out[kind] = (result, load_checkpoint(result.path), cfg)
    return out


def _random_tensors(meta: FileMeta, seed: int = 0, as_client: bool = False) -> dict[str, torch.Tensor]:
    """Decoded tensors for ``meta``: random masks / probs / scales and head."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, target in meta.targets.items():
        if meta.kind == "scaling":
            out[f"scale/{name}"] = torch.randn(target.out_features, generator=g)
        elif meta.kind == "bernoulli" and not as_client:
            out[f"probs/{name}"] = torch.rand(target.shape, generator=g)
        else:
            out[f"mask/{name}"] = torch.rand(target.shape, generator=g) < 0.7
    for name, shape in meta.head.items():
        out[f"head/{name}"] = torch.randn(shape, generator=g)
    return out


def _assert_same(decoded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(decoded) == set(expected)
    for key, value in expected.items():
        assert decoded[key].dtype == value.dtype, key
        assert torch.equal(decoded[key], value), key


def _header_keys(data: bytes) -> list[str]:
    header, _ = checkpoint.parse_header(data, "x")
    return [k for k in header if k != "__metadata__"]


# --------------------------------------------------------------------------- init globals


@pytest.mark.parametrize("kind", KINDS)
def test_init_global_contents(globals_by_kind, kind):
    result, gl, cfg = globals_by_kind[kind]
    meta = gl.meta
    assert (meta.kind, meta.role, meta.round, meta.client, meta.num_examples) == (kind, "global", 0, None, 0)
    assert len(meta.targets) == 13
    assert meta.labels == ["negative", "positive"]
    assert set(meta.head) == {"classifier.weight", "classifier.bias"}
    assert meta.head["classifier.weight"] == [2, 32]
    assert gl.digest == result.digest
    for name, target in meta.targets.items():
        if kind == "bernoulli":
            assert torch.equal(gl.tensors[f"probs/{name}"], torch.full(target.shape, 0.99))
        elif kind == "threshold":
            assert torch.equal(gl.tensors[f"mask/{name}"], torch.ones(target.shape, dtype=torch.bool))
        else:
            assert torch.equal(gl.tensors[f"scale/{name}"], torch.ones(target.out_features))
    assert gl.density() == pytest.approx(0.99 if kind == "bernoulli" else 1.0)
    assert meta.encoding == ("packed" if kind == "threshold" else "float")
    expected_bits = {"threshold": sum((t.shape[0] * t.shape[1] + 7) // 8 * 8 for t in meta.targets.values()),
                     "scaling": 32 * sum(t.out_features for t in meta.targets.values())}.get(kind)
    if expected_bits is not None:  # mask_bits counts mask/code/scale payloads (not a global's probs)
        assert meta.mask_bits == expected_bits


@pytest.mark.parametrize("kind", KINDS)
def test_init_global_file_round_trip_bit_exact(globals_by_kind, kind):
    # Prepare
    result, gl, _ = globals_by_kind[kind]
    with open(result.path, "rb") as handle:
        data = handle.read()
    # Execute
    again = loads(data, "again")
    stored = checkpoint.encode_tensors(gl.meta, gl.tensors, None)
    # Assert: decode(encode(decode(file))) == file, byte for byte
    _assert_same(again.tensors, gl.tensors)
    assert serialize(gl.meta, stored) == data
    assert again.digest == checkpoint.file_digest(data) == result.digest


@pytest.mark.parametrize("kind", KINDS)
def test_global_with_random_values_round_trips(globals_by_kind, kind):
    _, gl, _ = globals_by_kind[kind]
    tensors = _random_tensors(gl.meta, seed=1)
    stored = checkpoint.encode_tensors(gl.meta, tensors, None)
    decoded = loads(serialize(gl.meta, stored), "g").tensors
    _assert_same(decoded, tensors)


def _client_meta(gl, encoding: str) -> FileMeta:
    update = {"role": "client", "client": 1, "num_examples": 17, "parent_digest": gl.digest, "encoding": encoding}
    if gl.meta.kind == "scaling":
        update["encoding"] = "float"
    if encoding == "coded" and gl.meta.kind == "threshold":
        update["coding_flip_rate"] = 0.3
    return gl.meta.model_copy(update=update)


CLIENT_CASES = [(k, e) for k in ("bernoulli", "threshold") for e in ("packed", "none", "coded", "sparse")] + [
    ("scaling", "float")
]


@pytest.mark.parametrize("kind,encoding", CLIENT_CASES)
def test_client_file_round_trip_bit_exact(globals_by_kind, kind, encoding):
    # Prepare
    _, gl, _ = globals_by_kind[kind]
    meta = _client_meta(gl, encoding)
    tensors = _random_tensors(meta, seed=2, as_client=True)
    # Execute
    stored = checkpoint.encode_tensors(meta, tensors, gl)
    data = serialize(meta, stored)
    decoded = loads(data, "client", reference=gl if encoding in checkpoint.CODED_ENCODINGS else None)
    # Assert
    _assert_same(decoded.tensors, tensors)
    assert decoded.meta == meta
    keys = _header_keys(data)
    group = {"packed": "mask/", "none": "mask/", "coded": "code/", "sparse": "code/", "float": "scale/"}[encoding]
    assert {k.split("/")[0] + "/" for k in keys} == {group, "head/"}
    if encoding == "none":
        name = next(iter(meta.targets))
        assert stored[f"mask/{name}"].dtype == torch.uint8
        assert list(stored[f"mask/{name}"].shape) == meta.targets[name].shape
    if encoding == "packed":
        name = next(iter(meta.targets))
        rows, cols = meta.targets[name].shape
        assert stored[f"mask/{name}"].shape == ((rows * cols + 7) // 8,)


@pytest.mark.parametrize("encoding", checkpoint.CODED_ENCODINGS)
def test_coded_client_needs_its_global(globals_by_kind, encoding):
    _, gl, _ = globals_by_kind["bernoulli"]
    meta = _client_meta(gl, encoding)
    data = serialize(meta, checkpoint.encode_tensors(meta, _random_tensors(meta, as_client=True), gl))
    with pytest.raises(CheckpointError, match="needs the global"):
        loads(data, "c.safetensors")
    with pytest.raises(SupermaskError, match="needs the global"):
        checkpoint.encode_tensors(meta, _random_tensors(meta, as_client=True), None)


@pytest.mark.parametrize("kind", ["bernoulli", "threshold"])
@pytest.mark.parametrize("encoding", checkpoint.CODED_ENCODINGS)
def test_coded_client_refused_with_another_global(globals_by_kind, tmp_path, kind, encoding):
    # Prepare: the same global content under another round number is another file (another digest)
    _, gl, _ = globals_by_kind[kind]
    other_meta = gl.meta.model_copy(update={"round": 3})
    other_bytes = serialize(other_meta, checkpoint.encode_tensors(other_meta, gl.tensors, None))
    other = loads(other_bytes, "other")
    assert other.digest != gl.digest
    meta = _client_meta(gl, encoding)
    data = serialize(meta, checkpoint.encode_tensors(meta, _random_tensors(meta, as_client=True), gl))
    # Execute / Assert
    with pytest.raises(CheckpointError) as info:
        loads(data, "c.safetensors", reference=other)
    message = str(info.value)
    assert "parent digest" in message or "coded against" in message
    assert message.startswith("c.safetensors")


@pytest.mark.parametrize("kind", ["bernoulli", "threshold"])
def test_sparse_plans_are_computed_once_per_global(globals_by_kind, monkeypatch, kind):
    # Prepare: a fresh copy of the global, and a counting plan builder
    _, gl, _ = globals_by_kind[kind]
    reference = loads(serialize(gl.meta, checkpoint.encode_tensors(gl.meta, gl.tensors, None)), "g")
    meta = _client_meta(reference, "sparse")
    built, build = [], coding.sparse_plan
    monkeypatch.setattr(coding, "sparse_plan", lambda probs: built.append(1) or build(probs))
    # Execute: encode and decode three clients against the same global
    for seed in range(3):
        tensors = _random_tensors(meta, seed=seed, as_client=True)
        data = serialize(meta, checkpoint.encode_tensors(meta, tensors, reference))
        _assert_same(loads(data, f"c{seed}", reference=reference).tensors, tensors)
    # Assert: one plan per target module, built once
    assert len(built) == len(meta.targets)


def test_sparse_client_with_flip_rate_refused(globals_by_kind):
    _, gl, _ = globals_by_kind["threshold"]
    meta = _client_meta(gl, "sparse").model_copy(update={"coding_flip_rate": 0.1})
    data = serialize(meta, checkpoint.encode_tensors(meta, _random_tensors(meta, as_client=True), gl))
    with pytest.raises(CheckpointError, match="sparse file must not set 'coding_flip_rate'"):
        loads(data, "c.safetensors", reference=gl)


@pytest.mark.parametrize("bits,chosen", [
    ({"packed": 1000, "coded": 96, "sparse": 100}, "sparse"),  # coded 4% smaller: sparse decodes faster
    ({"packed": 1000, "coded": 94, "sparse": 100}, "coded"),  # coded 6% smaller
    ({"packed": 98, "coded": 97, "sparse": 100}, "packed"),  # coded not 5% below sparse: the smallest other
    ({"packed": 1000, "coded": 94}, "coded"),
    ({"sparse": 5}, "sparse"),
])
def test_auto_encoding_policy(bits, chosen):
    assert preferred_encoding(bits) == chosen


@pytest.mark.parametrize("kind", KINDS)
def test_file_never_holds_base_weights(globals_by_kind, kind):
    result, gl, _ = globals_by_kind[kind]
    with open(result.path, "rb") as handle:
        data = handle.read()
    header, _ = checkpoint.parse_header(data, result.path)
    keys = _header_keys(data)
    assert keys and all(k.startswith(ALLOWED_GROUPS) for k in keys)
    assert not [k for k in header if "embeddings" in k]
    assert not [k for k in keys if k.endswith(".weight") and not k.startswith("head/")]
    assert set(header["__metadata__"]) == {"supermask"}
    meta = json.loads(header["__metadata__"]["supermask"])
    assert meta["format"] == "supermask" and meta["kind"] == kind
    # the whole file is far smaller than the base model's float32 target weights
    assert len(data) < 4 * gl.meta.num_weights if kind != "bernoulli" else len(data) < 4 * gl.meta.num_weights + 4096


def test_extra_tensor_is_refused(globals_by_kind):
    _, gl, _ = globals_by_kind["threshold"]
    stored = checkpoint.encode_tensors(gl.meta, gl.tensors, None)
    stored["bert.embeddings.word_embeddings.weight"] = torch.zeros(3, 2)
    with pytest.raises(CheckpointError, match="unexpected tensor"):
        loads(serialize(gl.meta, stored), "bad")


# --------------------------------------------------------------------------- save / load


def test_save_refuses_overwrite_without_force(globals_by_kind, tmp_path):
    # Prepare
    _, gl, _ = globals_by_kind["scaling"]
    stored = checkpoint.encode_tensors(gl.meta, gl.tensors, None)
    path = str(tmp_path / "sub" / "g.safetensors")
    digest = save_checkpoint(path, gl.meta, stored)
    with open(path, "rb") as handle:
        before = handle.read()
    changed = gl.meta.model_copy(update={"round": 5})
    # Execute / Assert
    with pytest.raises(SupermaskError, match="--force"):
        save_checkpoint(path, changed, stored)
    with open(path, "rb") as handle:
        assert handle.read() == before
    assert checkpoint.file_digest(before) == digest
    new_digest = save_checkpoint(path, changed, stored, force=True)
    reloaded = load_checkpoint(path)
    assert reloaded.meta.round == 5 and reloaded.digest == new_digest != digest
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["g.safetensors"]  # no temp files left


@pytest.mark.parametrize("kind", KINDS)
def test_memory_url_save_and_load(globals_by_kind, kind):
    _, gl, _ = globals_by_kind[kind]
    tensors = _random_tensors(gl.meta, seed=3)
    stored = checkpoint.encode_tensors(gl.meta, tensors, None)
    url = f"memory://supermask-tests/{uuid.uuid4().hex}/round_000/global.safetensors"
    digest = save_checkpoint(url, gl.meta, stored)
    try:
        loaded = load_checkpoint(url)
        assert loaded.digest == digest and loaded.path == url
        _assert_same(loaded.tensors, tensors)
        assert checkpoint.read_meta(url) == gl.meta
        with pytest.raises(SupermaskError, match="--force"):
            save_checkpoint(url, gl.meta, stored)
    finally:
        import fsspec

        fsspec.filesystem("memory").rm(url.replace("memory://", "/").rsplit("/round_000", 1)[0], recursive=True)


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "nope.safetensors"))


@pytest.mark.parametrize("kind", KINDS)
def test_serialize_is_deterministic(globals_by_kind, kind):
    _, gl, _ = globals_by_kind[kind]
    stored = checkpoint.encode_tensors(gl.meta, _random_tensors(gl.meta, seed=4), None)
    first = serialize(gl.meta, stored)
    second = serialize(gl.meta, dict(reversed(list(stored.items()))))
    assert first == second == serialize(gl.meta, stored)


def test_read_meta_matches_full_load(globals_by_kind):
    result, gl, _ = globals_by_kind["bernoulli"]
    assert checkpoint.read_meta(result.path) == gl.meta


# --------------------------------------------------------------------------- server state in globals


def _with_state(gl, groups: list[str], seed: int = 3) -> tuple[FileMeta, dict[str, torch.Tensor]]:
    """A global of ``gl``'s kind with random values and every tensor of the server-state ``groups``."""
    g = torch.Generator().manual_seed(seed)
    tensors = _random_tensors(gl.meta, seed=seed)
    for group in groups:
        bases = ("probs/",) if group.startswith("beta_") else ("probs/", "scale/", "head/")
        for key, value in list(tensors.items()):
            if key.startswith(bases):
                tensors[f"{group}/{key}"] = torch.rand(value.shape, generator=g) + 0.5
    return gl.meta.model_copy(update={"server_state": groups}), tensors


@pytest.mark.parametrize(
    "kind,groups",
    [("bernoulli", ["opt_m", "opt_v", "beta_a", "beta_b"]), ("threshold", ["opt_m"]), ("scaling", ["opt_m", "opt_v"])],
)
def test_global_with_server_state_round_trips(globals_by_kind, kind, groups):
    # Prepare
    _, gl, _ = globals_by_kind[kind]
    meta, tensors = _with_state(gl, groups)
    # Execute
    loaded = loads(serialize(meta, checkpoint.encode_tensors(meta, tensors, None)), "g")
    # Assert: bit-exact, listed in the metadata, and no moments for threshold masks (votes are not stepped)
    _assert_same(loaded.tensors, tensors)
    assert loaded.meta.server_state == groups == checkpoint.state_groups(tensors)
    assert not [k for k in tensors if k.startswith("opt_m/mask/")]


def test_server_state_tensors_must_match_the_metadata(globals_by_kind):
    _, gl, _ = globals_by_kind["bernoulli"]
    meta, tensors = _with_state(gl, ["opt_m", "opt_v"])
    stored = checkpoint.encode_tensors(meta, tensors, None)
    missing = {k: v for k, v in stored.items() if not k.startswith("opt_v/head/")}
    with pytest.raises(CheckpointError, match="missing tensor 'opt_v/head/"):
        loads(serialize(meta, missing), "g")
    undeclared = meta.model_copy(update={"server_state": ["opt_m"]})
    with pytest.raises(CheckpointError, match="unexpected tensor 'opt_v/"):
        loads(serialize(undeclared, stored), "g")


@pytest.mark.parametrize("group,value,message", [("opt_v", -1.0, "negative second moment"), ("beta_a", 0.0, "not positive")])
def test_server_state_values_are_checked(globals_by_kind, group, value, message):
    _, gl, _ = globals_by_kind["bernoulli"]
    meta, tensors = _with_state(gl, ["opt_m", "opt_v", "beta_a", "beta_b"])
    key = next(k for k in tensors if k.startswith(group + "/"))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = value
    with pytest.raises(CheckpointError, match=message):
        loads(serialize(meta, checkpoint.encode_tensors(meta, tensors, None)), "g")


def test_server_state_refused_in_clients_and_beta_state_in_other_kinds(globals_by_kind):
    _, gl, _ = globals_by_kind["bernoulli"]
    client = _client_meta(gl, "packed").model_copy(update={"server_state": ["opt_m"]})
    stored = checkpoint.encode_tensors(client, _random_tensors(client, as_client=True), None)
    with pytest.raises(CheckpointError, match="must be empty in a client file"):
        loads(serialize(client, stored), "c")
    twice = gl.meta.model_copy(update={"server_state": ["opt_m", "opt_m"]})
    with pytest.raises(CheckpointError, match="lists a group twice"):
        loads(serialize(twice, checkpoint.encode_tensors(gl.meta, gl.tensors, None)), "g")
    _, th, _ = globals_by_kind["threshold"]
    meta = th.meta.model_copy(update={"server_state": ["beta_a"]})
    with pytest.raises(CheckpointError, match="only bernoulli globals"):
        loads(serialize(meta, checkpoint.encode_tensors(th.meta, th.tensors, None)), "g")
