"""Untrusted client uploads: a corpus of bad files generated from a real upload, each refused with
its own one-line message (library and CLI), plus property tests over random and mutated bytes."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from typer.testing import CliRunner

from conftest import tiny_config_dict
from supermask_cli import checkpoint
from supermask_cli import steps
from supermask_cli.cli import app
from supermask_cli.config import load_config
from supermask_cli.errors import CheckpointError, SupermaskError
from supermask_cli.layout import Layout

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------------------------ byte helpers


def split(data: bytes) -> tuple[dict, bytes]:
    """(header JSON, tensor bytes) of a safetensors file."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + body


def edit_meta_json(data: bytes, fn) -> bytes:
    """Edit the raw ``supermask`` metadata JSON text of a file (``fn(dict) -> dict`` or str edit)."""
    header, body = split(data)
    text = header["__metadata__"]["supermask"]
    out = fn(json.loads(text))
    header["__metadata__"]["supermask"] = out if isinstance(out, str) else json.dumps(out)
    return join(header, body)


def reserialize(data: bytes, meta_update: dict | None = None, tensors=None) -> bytes:
    """Rebuild a file with ``checkpoint.serialize`` from edited metadata and/or stored tensors."""
    header, _ = checkpoint.parse_header(data, "x")
    meta = checkpoint.parse_meta(header, "x")
    stored = dict(st_load(data))
    if tensors is not None:
        stored = tensors(stored)
    return checkpoint.serialize(meta.model_copy(update=meta_update or {}), stored)


def first_key(stored: dict, group: str) -> str:
    return sorted(k for k in stored if k.startswith(group + "/"))[0]


def with_tensor(data: bytes, fn) -> bytes:
    return reserialize(data, tensors=fn)


class Evil:
    """Unpickling this creates ``marker``: proof that a file was (or was not) executed."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ------------------------------------------------------------------------------------------ fixture


class Run:
    def __init__(self, root: Path, tiny_model, tiny_data) -> None:
        self.root = root
        raw = tiny_config_dict(root / "run", tiny_model, tiny_data, "threshold")
        self.config = root / "threshold.yaml"
        self.config.write_text(yaml.safe_dump(raw))
        braw = tiny_config_dict(root / "run_b", tiny_model, tiny_data, "bernoulli")
        self.bconfig = root / "bernoulli.yaml"
        self.bconfig.write_text(yaml.safe_dump(braw))
        for args in (
            ["init", "-c", self.config],
            ["train-client", "-c", self.config, "--client", "0", "--set", "mask.encoding=coded"],
            ["train-client", "-c", self.config, "--client", "1"],
            ["train-client", "-c", self.config, "--client", "2", "--set", "mask.encoding=packed",
             "--out", root / "packed_client.safetensors"],
            ["train-client", "-c", self.config, "--client", "2", "--set", "mask.encoding=sparse",
             "--out", root / "sparse_client.safetensors"],
            ["init", "-c", self.bconfig],
        ):
            result = invoke(*args)
            assert result.exit_code == 0, (args, result.output)
        self.layout = Layout(str(root / "run"))
        self.global_path = self.layout.global_path(0)
        self.gl = steps.load_global(self.global_path)
        self.cfg = steps.resolved(load_config(self.config, []), self.gl.meta.labels)
        self.client0 = self.layout.client_path(0, 0)
        self.client1 = self.layout.client_path(0, 1)
        self.coded = Path(self.client0).read_bytes()
        self.packed = (root / "packed_client.safetensors").read_bytes()
        self.sparse = (root / "sparse_client.safetensors").read_bytes()
        self.bglobal = Path(Layout(str(root / "run_b")).global_path(0)).read_bytes()
        self.bad_dir = root / "bad"
        self.bad_dir.mkdir()

    def write_bad(self, name: str, data: bytes) -> str:
        path = self.bad_dir / f"{name}.safetensors"
        path.write_bytes(data)
        return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model, tiny_data) -> Run:
    return Run(tmp_path_factory.mktemp("hardening"), tiny_model, tiny_data)


def test_fixture_uploads_are_valid(run):
    assert checkpoint.loads(run.coded, run.client0, reference=run.gl).meta.encoding == "coded"
    assert checkpoint.loads(run.packed, "p", reference=run.gl).meta.encoding == "packed"
    assert checkpoint.loads(run.sparse, "s", reference=run.gl).meta.encoding == "sparse"
    for path in (run.client0, run.client1):
        steps.check_client(checkpoint.load_checkpoint(path, reference=run.gl).meta, path, run.gl, run.cfg)


# ------------------------------------------------------------------------------------------- corpus

# name -> (builder(run) -> bytes, substring refused with by load_checkpoint + check_client,
#          substring through `aggregate` (which reads metadata first), or None: the same)


def _raw_header(text: bytes) -> bytes:
    return len(text).to_bytes(8, "little") + text


def _header_bomb(run: Run) -> bytes:
    header, body = split(run.coded)
    for i in range(50_000):
        header[f"x/{i}"] = {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}
    return join(header, body)


def _rename_target(meta: dict) -> dict:
    name = sorted(meta["targets"])[0]
    meta["targets"]["renamed." + name] = meta["targets"].pop(name)
    return meta


def _rename_target_file(run: Run) -> bytes:
    header, body = split(edit_meta_json(run.coded, _rename_target))
    key = sorted(k for k in header if k.startswith("code/"))[0]
    header["code/renamed." + key[5:]] = header.pop(key)
    return join(header, body)


def _shape(value):
    def fn(run: Run) -> bytes:
        header, body = split(run.coded)
        header[first_key(header, "head")]["shape"] = value
        return join(header, body)

    return fn


def _head(fn):
    def build(run: Run) -> bytes:
        def edit(stored):
            key = first_key(stored, "head")
            stored[key] = fn(stored[key].clone())
            return stored

        return with_tensor(run.coded, edit)

    return build


def _set_first(t: torch.Tensor, value: float) -> torch.Tensor:
    t.view(-1)[0] = value
    return t


def _probs_out_of_range(run: Run) -> bytes:
    def edit(stored):
        key = first_key(stored, "probs")
        stored[key] = _set_first(stored[key].clone(), 1.5)
        return stored

    return with_tensor(run.bglobal, edit)


CORPUS: dict[str, tuple] = {
    "empty": (lambda r: b"", "too short", None),
    "truncated_4": (lambda r: r.coded[:4], "too short", None),
    "truncated_in_header": (lambda r: r.coded[:200], "header runs past the end", None),
    "truncated_after_header": (lambda r: r.coded[: 8 + int.from_bytes(r.coded[:8], "little")], "truncated or padded", None),
    "truncated_mid_tensors": (lambda r: r.coded[: len(r.coded) - 777], "truncated or padded", None),
    "truncated_last_byte": (lambda r: r.coded[:-1], "truncated or padded", None),
    "padded": (lambda r: r.coded + b"\0" * 64, "truncated or padded", None),
    "header_length_2e64": (lambda r: b"\xff" * 8 + r.coded[8:], "header claims 18446744073709551615 bytes", None),
    "header_length_8MiB": (lambda r: (8 << 20).to_bytes(8, "little") + r.coded[8:], "header runs past the end", None),
    "header_bomb_50k_entries": (_header_bomb, "entries, limit 20000", "-byte limit"),  # aggregate: over max_client_bytes
    "header_deeply_nested": (lambda r: _raw_header(b"[" * 100_000 + b"]" * 100_000), "header is not JSON", "-byte limit"),
    "header_huge_integer": (lambda r: _raw_header(b'{"a": ' + b"9" * 5000 + b"}"), "header is not JSON", None),
    "not_supermask_metadata": (lambda r: join({"__metadata__": {"x": "y"}}, b""), "no 'supermask' metadata", None),
    "mask_float32": (lambda r: with_tensor(r.packed, lambda s: {**s, first_key(s, "mask"): s[first_key(s, "mask")].float()}),
                     "has dtype F32, expected U8", None),
    "code_float32": (lambda r: with_tensor(r.coded, lambda s: {**s, first_key(s, "code"): torch.zeros(4)}),
                     "has dtype F32, expected U8", None),
    "head_float16": (_head(lambda t: t.half()), "has dtype F16, expected F32", None),
    "head_wrong_shape": (_head(lambda t: t.reshape(-1, 1) if t.dim() == 1 else t.t().contiguous()), "has shape", None),
    "mask_wrong_shape": (lambda r: with_tensor(r.packed, lambda s: {**s, first_key(s, "mask"): s[first_key(s, "mask")][:-1].clone()}),
                         "has shape", None),
    "head_shape_not_a_list": (_shape(5), "has a malformed shape", None),
    "head_shape_null": (_shape(None), "has a malformed shape", None),
    "head_nan": (_head(lambda t: _set_first(t, float("nan"))), "holds NaN or Inf", None),
    "head_inf": (_head(lambda t: _set_first(t, float("-inf"))), "holds NaN or Inf", None),
    "missing_tensor": (lambda r: with_tensor(r.coded, lambda s: {k: v for k, v in s.items() if k != first_key(s, "head")}),
                       "missing tensor", None),
    "extra_base_weight": (lambda r: with_tensor(r.coded, lambda s: {**s, "bert.embeddings.word_embeddings.weight": torch.zeros(3)}),
                          "unexpected tensor", None),
    "code_garbage": (lambda r: with_tensor(r.coded, lambda s: {**s, first_key(s, "code"): torch.full((8,), 255, dtype=torch.uint8)}),
                     "does not decode", None),
    "sparse_garbage": (lambda r: with_tensor(r.sparse, lambda s: {**s, first_key(s, "code"): torch.full((8,), 255, dtype=torch.uint8)}),
                       "does not decode: sparse mask", None),
    "sparse_truncated": (lambda r: with_tensor(r.sparse, lambda s: {**s, first_key(s, "code"): s[first_key(s, "code")][:-1].clone()}),
                         "does not decode: sparse mask", None),
    "sparse_flip_rate": (lambda r: reserialize(r.sparse, {"coding_flip_rate": 0.01}), "sparse file must not set 'coding_flip_rate'", None),
    "sparse_other_global": (lambda r: reserialize(r.sparse, {"parent_digest": "2" * 64}), "coded against another global",
                            "trained from another global file"),
    "other_base_model": (lambda r: reserialize(r.coded, {"base_model": r.gl.meta.base_model.model_copy(update={"fingerprint": "0" * 64})}),
                         "trained against another base model", None),
    "other_round": (lambda r: reserialize(r.coded, {"round": 1}), "trained in round 1, but this is round 0", None),
    "other_config": (lambda r: reserialize(r.coded, {"config_digest": "1" * 64}), "config digest differs", None),
    "other_global": (lambda r: reserialize(r.coded, {"parent_digest": "2" * 64}), "coded against another global",
                     "trained from another global file"),
    "renamed_target": (_rename_target_file, "differ from the global it is coded against", "target modules, head or labels differ"),
    "global_not_client": (lambda r: r.bglobal, "is a global file, not a client upload", None),
    "client_id_out_of_range": (lambda r: reserialize(r.coded, {"client": 3}), "client id 3 is outside 0..2", None),
    "num_examples_zero": (lambda r: reserialize(r.coded, {"num_examples": 0}), "num_examples 0 is outside 1..", None),
    "num_examples_huge": (lambda r: reserialize(r.coded, {"num_examples": r.cfg.federation.max_client_examples + 1}),
                          "is outside 1..10000000 (federation.max_client_examples)", None),
    "num_examples_2e70": (lambda r: edit_meta_json(r.coded, lambda m: {**m, "num_examples": 2**70}), "num_examples 1180591620717411303424", None),
    "flip_rate_nan": (lambda r: edit_meta_json(r.coded, lambda m: json.dumps({**m, "coding_flip_rate": float("nan")})),
                      "'coding_flip_rate' is not a finite number", None),
    "bad_metadata_json": (lambda r: edit_meta_json(r.coded, lambda m: "{not json"), "bad metadata field", None),
    "format_version_2": (lambda r: edit_meta_json(r.coded, lambda m: {**m, "format_version": 2}), "format version 2", None),
    "pickle_dumps": (lambda r: pickle.dumps({"mask": Evil(str(r.root / "PWNED_pickle"))}), "not a safetensors file", None),
    "torch_save": (lambda r: _torch_save(r), "not a safetensors file", None),
}

def _torch_save(run: Run) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save({"mask": Evil(str(run.root / "PWNED_torch"))}, buffer)
    return buffer.getvalue()


def _validate(run: Run, path: str) -> None:
    """What the server does with an upload: load and decode it, then check it against the round."""
    ckpt = checkpoint.load_checkpoint(path, reference=run.gl)
    steps.check_client(ckpt.meta, path, run.gl, run.cfg)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_bad_file_refused_by_library(run, name):
    build, message, _ = CORPUS[name]
    path = run.write_bad(name, build(run))
    with pytest.raises(CheckpointError, match=re.escape(message)) as info:
        _validate(run, path)
    assert str(info.value).startswith(path + ":")
    assert "\n" not in str(info.value)
    assert not list(run.root.glob("PWNED*")), "a pickle was executed"


def _assert_cli_refused(run: Run, result, path: str, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert path in errors[0] and message in errors[0], errors[0]
    assert not os.path.exists(run.layout.global_path(1))
    assert not list(run.root.glob("PWNED*")), "a pickle was executed"


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_bad_file_refused_by_cli_aggregate(run, name):
    build, message, cli_message = CORPUS[name]
    path = run.write_bad(name, build(run))
    # client1 is good; the bad files derive from client 0's upload, so their ids differ from it.
    result = invoke("aggregate", "-c", run.config, "--clients", run.client1, "--clients", path)
    _assert_cli_refused(run, result, path, cli_message or message)


def test_duplicated_client_id_refused(run):
    dup = run.write_bad("duplicate", run.coded)  # same bytes, so the same client id 0
    with pytest.raises(CheckpointError, match="client 0 already uploaded"):
        steps.aggregate(run.cfg, client_paths=[run.client0, dup], out=str(run.root / "never.safetensors"))
    result = invoke("aggregate", "-c", run.config, "--clients", run.client0, "--clients", dup)
    _assert_cli_refused(run, result, dup, f"client 0 already uploaded {run.client0}")
    assert not (run.root / "never.safetensors").exists()


def test_bernoulli_global_with_probabilities_outside_unit_interval(run):
    path = run.write_bad("bernoulli_global", _probs_out_of_range(run))
    with pytest.raises(CheckpointError, match=re.escape("holds probabilities outside [0, 1]")):
        checkpoint.load_checkpoint(path)
    out = run.root / "from_bad_global.safetensors"
    result = invoke("aggregate", "-c", run.bconfig, "--global", path, "--clients", run.client0, "--out", out)
    _assert_cli_refused(run, result, path, "probabilities outside [0, 1]")
    assert not out.exists()


def test_packed_padding_bits_error_names_the_file(run):
    """A packed mask whose last byte has bits set past the module's last weight."""
    meta = checkpoint.parse_meta(split(run.packed)[0], "x")
    name = sorted(meta.targets)[0]
    targets = {**meta.targets, name: checkpoint.TargetMeta(shape=[3, 3], out_features=3)}
    stored = dict(st_load(run.packed))
    stored[f"mask/{name}"] = torch.full((2,), 255, dtype=torch.uint8)
    data = checkpoint.serialize(meta.model_copy(update={"targets": targets}), stored)
    with pytest.raises(CheckpointError, match=r"^padding\.safetensors: .*nonzero padding bits"):
        checkpoint.loads(data, "padding.safetensors")


def test_pickle_is_live_but_never_executed(run, tmp_path):
    """The payload really runs when unpickled, yet loading it as a checkpoint (in a real process) does not."""
    probe = tmp_path / "probe_marker"
    pickle.loads(pickle.dumps(Evil(str(probe))))
    assert probe.exists()
    marker = tmp_path / "PWNED_subprocess"
    path = tmp_path / "client_000.safetensors"
    path.write_bytes(pickle.dumps({"mask": Evil(str(marker))}))
    cli = [sys.executable, "-m", "supermask_cli"] if importlib.util.find_spec("supermask_cli.__main__") else ["supermask"]
    proc = subprocess.run([*cli, "inspect", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("error:") == 1 and str(path) in proc.stderr and "not a safetensors file" in proc.stderr
    assert not marker.exists()


def test_skip_invalid_records_dropped_files(run):
    nan_file = run.write_bad("skip_nan", CORPUS["head_nan"][0](run))
    round_file = run.write_bad("skip_round", CORPUS["other_round"][0](run))
    out = run.root / "skip_global.safetensors"
    result = invoke("aggregate", "-c", run.config, "--clients", run.client1, "--clients", nan_file,
                    "--clients", round_file, "--skip-invalid", "--out", out)
    assert result.exit_code == 0, result.output
    info = invoke("inspect", out, "--json")
    assert info.exit_code == 0, info.output
    agg = json.loads(info.stdout)["aggregation"]
    assert [c["client"] for c in agg["clients"]] == [1]
    dropped = {d["file"]: d["reason"] for d in agg["dropped"]}
    assert set(dropped) == {nan_file, round_file}
    assert "holds NaN or Inf" in dropped[nan_file] and "trained in round 1" in dropped[round_file]
    assert not os.path.exists(run.layout.global_path(1))

    only_bad = invoke("aggregate", "-c", run.config, "--clients", nan_file, "--skip-invalid",
                      "--out", run.root / "none.safetensors")
    assert only_bad.exit_code == 2 and "only 0 valid client file(s)" in only_bad.stderr
    assert not (run.root / "none.safetensors").exists()


# --------------------------------------------------------------------------------- property tests

FUZZ = settings(
    max_examples=200, deadline=2000, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _only_checkpoint_or_supermask_error(run: Run, data: bytes) -> None:
    try:
        result = checkpoint.loads(data, "fuzz.safetensors", reference=run.gl)
    except SupermaskError as exc:
        assert str(exc).startswith("fuzz.safetensors: ") and "\n" not in str(exc), str(exc)
        return
    except BaseException as exc:  # noqa: BLE001 - pyo3 PanicException is a BaseException
        pytest.fail(f"loads raised {type(exc).__module__}.{type(exc).__qualname__}: {exc!r}")
    assert isinstance(result, checkpoint.Checkpoint)


@FUZZ
@given(data=st.one_of(
    st.binary(max_size=2048),
    st.tuples(st.integers(0, 4096), st.binary(max_size=4096)).map(lambda t: t[0].to_bytes(8, "little") + t[1]),
))
def test_random_bytes(run, data):
    _only_checkpoint_or_supermask_error(run, data)


OPS = st.lists(
    st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]), st.floats(0, 1), st.booleans(),
              st.integers(0, 255)),
    min_size=1, max_size=4,
)


def mutate(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    header_end = 8 + int.from_bytes(data[:8], "little")
    for op, where, in_header, value in ops:
        if not buf:
            break
        # Half of the edits land in the header (JSON, metadata), half anywhere.
        limit = min(header_end, len(buf)) if in_header else len(buf)
        pos = min(int(where * limit), len(buf) - 1)
        if op == "flip":
            buf[pos] ^= 1 << (value % 8)
        elif op == "set":
            buf[pos] = value
        elif op == "insert":
            buf.insert(pos, value)
        elif op == "delete":
            del buf[pos]
        else:
            del buf[pos:]
    return bytes(buf)


@FUZZ
@given(which=st.sampled_from(["coded", "sparse", "packed", "global"]), ops=OPS)
def test_mutated_valid_files(run, which, ops):
    base = {"coded": run.coded, "sparse": run.sparse, "packed": run.packed, "global": Path(run.global_path).read_bytes()}[which]
    _only_checkpoint_or_supermask_error(run, mutate(base, ops))


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
              st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


def _replace(node, path, value):
    if not path:
        return value
    node[path[0]] = _replace(node[path[0]], path[1:], value)
    return node


@FUZZ
@given(which=st.sampled_from(["coded", "packed"]), in_meta=st.booleans(), pick=st.floats(0, 1), value=JSON_VALUES)
def test_structured_header_mutations(run, which, in_meta, pick, value):
    """Replace one value anywhere in the header JSON or in the supermask metadata JSON."""
    header, body = split(run.coded if which == "coded" else run.packed)
    if in_meta:
        meta = json.loads(header["__metadata__"]["supermask"])
        paths = list(_paths(meta))
        meta = _replace(meta, paths[min(int(pick * len(paths)), len(paths) - 1)], value)
        header["__metadata__"]["supermask"] = json.dumps(meta)
    else:
        paths = list(_paths(header))
        header = _replace(header, paths[min(int(pick * len(paths)), len(paths) - 1)], value)
    raw = json.dumps(header).encode()
    _only_checkpoint_or_supermask_error(run, len(raw).to_bytes(8, "little") + raw + body)
