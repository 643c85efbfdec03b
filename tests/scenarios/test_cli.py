"""End-to-end tests of the ``supermask`` CLI through typer's CliRunner on the tiny BERT and tiny TSVs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import tiny_config_dict
from supermask_cli import checkpoint
from supermask_cli import steps
from conftest import aggregate_stacked
from supermask_cli.cli import app
from supermask_cli.config import load_config
from supermask_cli.masked_model import bake_global

KINDS = ("threshold", "bernoulli", "scaling")
SENTENCES = ["good movie", "the plot was awful and boring", "a film", "love the best fun"]


def invoke(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{args}: exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result


def assert_user_error(result, *needles: str) -> str:
    """Exit 2, exactly one line starting with 'error:' that names every needle, no traceback."""
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output!r} {result.exception!r}"
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:"), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def write_config(path: Path, run_dir: Path, model: Path, data, kind: str = "threshold", **sections) -> Path:
    raw = tiny_config_dict(run_dir, model, data, kind)
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(raw))
    return path


def files_under(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- the main flow per kind


@pytest.fixture(scope="module", params=KINDS)
def flow(request, tmp_path_factory, tiny_model, tiny_data):
    """init -> train-client 0,1,2 -> aggregate -> eval -> export, all through the CLI."""
    kind = request.param
    root = tmp_path_factory.mktemp(f"flow_{kind}")
    run_dir = root / "run"
    cfg_path = write_config(root / "cfg.yaml", run_dir, tiny_model, tiny_data, kind)
    outputs = {"init": invoke("init", "--config", cfg_path)}
    outputs["clients"] = [invoke("train-client", "--config", cfg_path, "--client", c) for c in range(3)]
    outputs["aggregate"] = invoke("aggregate", "--config", cfg_path)
    outputs["eval"] = invoke("eval", "--config", cfg_path)
    export_dir = root / "exported"
    outputs["export"] = invoke(
        "export", "--checkpoint", run_dir / "round_001" / "global.safetensors", "--out", export_dir
    )
    return {"kind": kind, "root": root, "run_dir": run_dir, "cfg_path": cfg_path, "export_dir": export_dir, **outputs}


def test_flow_writes_the_run_layout(flow):
    run_dir = flow["run_dir"]
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "round_000" / "global.safetensors").is_file()
    assert (run_dir / "round_001" / "global.safetensors").is_file()
    names = sorted(p.name for p in (run_dir / "round_000" / "clients").iterdir())
    assert names == ["client_000.safetensors", "client_001.safetensors", "client_002.safetensors"]
    assert "13 target modules" in flow["init"].output
    assert f"kind {flow['kind']}" in flow["init"].output
    assert not list(run_dir.rglob(".tmp-*"))


def test_flow_client_files_are_valid_uploads(flow):
    run_dir = flow["run_dir"]
    gl = checkpoint.load_checkpoint(str(run_dir / "round_000" / "global.safetensors"))
    for c in range(3):
        ckpt = checkpoint.load_checkpoint(str(run_dir / "round_000" / "clients" / f"client_{c:03d}.safetensors"), reference=gl)
        meta = ckpt.meta
        assert (meta.role, meta.kind, meta.round, meta.client, meta.num_examples) == ("client", flow["kind"], 0, c, 32)
        assert meta.parent_digest == gl.digest
        assert meta.base_model == gl.meta.base_model and meta.config_digest == gl.meta.config_digest


def test_flow_aggregate_is_the_weighted_mean_of_the_uploads(flow):
    # Prepare
    run_dir = flow["run_dir"]
    gl0 = checkpoint.load_checkpoint(str(run_dir / "round_000" / "global.safetensors"))
    clients = [
        checkpoint.load_checkpoint(str(run_dir / "round_000" / "clients" / f"client_{c:03d}.safetensors"), reference=gl0)
        for c in range(3)
    ]
    # Execute
    expected = aggregate_stacked([c.tensors for c in clients], [c.meta.num_examples for c in clients], flow["kind"])
    gl1 = checkpoint.load_checkpoint(str(run_dir / "round_001" / "global.safetensors"))
    # Assert
    assert (gl1.meta.round, gl1.meta.num_examples, gl1.meta.parent_digest) == (1, 96, gl0.digest)
    assert gl1.meta.aggregation.rule == "mean"
    assert [r.client for r in gl1.meta.aggregation.clients] == [0, 1, 2]
    assert set(gl1.tensors) == set(expected)
    for key, value in expected.items():
        if value.dtype == torch.bool:
            assert torch.equal(gl1.tensors[key], value), key
        else:
            torch.testing.assert_close(gl1.tensors[key], value, rtol=1e-6, atol=1e-7)


def test_flow_eval_metrics(flow):
    path = flow["run_dir"] / "round_001" / "metrics.json"
    metrics = json.loads(path.read_text())
    assert metrics["round"] == 1
    assert metrics["num_examples"] == 32
    for key in ("round", "num_examples", "loss", "accuracy"):
        value = metrics[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), key
        assert math.isfinite(value), key
    assert metrics["loss"] > 0
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["accuracy"] * 32 == pytest.approx(round(metrics["accuracy"] * 32))
    assert metrics["kind"] == flow["kind"]
    assert str(path) in flow["eval"].output
    log = (flow["run_dir"] / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in log] == [1]


def test_flow_export_matches_baked_global(flow):
    # Prepare
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    gl = checkpoint.load_checkpoint(str(flow["run_dir"] / "round_001" / "global.safetensors"))
    cfg = steps.resolved(load_config(flow["cfg_path"]), gl.meta.labels)
    baked = bake_global(steps.load_base(cfg, gl.meta.labels), gl)
    exported = AutoModelForSequenceClassification.from_pretrained(flow["export_dir"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(flow["export_dir"])
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    # Execute
    with torch.no_grad():
        got = exported(**batch).logits
        expected = baked(**batch).logits
    # Assert
    assert got.shape == (4, 2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert exported.config.id2label == {0: "negative", 1: "positive"}
    assert not any("scores" in n or "scale" in n for n, _ in exported.named_parameters())


def test_flow_export_refuses_existing_directory(flow):
    result = CliRunner().invoke(app, [
        "export", "--checkpoint", str(flow["run_dir"] / "round_001" / "global.safetensors"), "--out", str(flow["export_dir"]),
    ])
    assert_user_error(result, str(flow["export_dir"]), "--force")


def test_flow_inspect_json(flow):
    run_dir = flow["run_dir"]
    gl_path = run_dir / "round_000" / "global.safetensors"
    client_path = run_dir / "round_000" / "clients" / "client_001.safetensors"
    # Execute
    result = invoke("inspect", client_path, "--global", gl_path, "--json")
    # Assert
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    info = json.loads(lines[0])
    assert isinstance(info, dict)
    assert (info["kind"], info["role"], info["round"], info["client"], info["num_examples"]) == (
        flow["kind"], "client", 0, 1, 32)
    ckpt = checkpoint.load_checkpoint(str(client_path), reference=checkpoint.load_checkpoint(str(gl_path)))
    assert info["density"] == pytest.approx(ckpt.density(), abs=1e-12)
    assert info["bits_per_weight"] == pytest.approx(ckpt.meta.mask_bits / ckpt.meta.num_weights)
    assert info["num_weights"] == 13952 and info["num_targets"] == 13
    # the aggregated global
    info = json.loads(invoke("inspect", run_dir / "round_001" / "global.safetensors", "--json").stdout)
    assert (info["kind"], info["role"], info["round"], info["client"], info["num_examples"]) == (
        flow["kind"], "global", 1, None, 96)
    assert isinstance(info["density"], float) and isinstance(info["bits_per_weight"], float)
    assert info["aggregation"]["rule"] == "mean" and len(info["aggregation"]["clients"]) == 3


# --------------------------------------------------------------------------- run and resume


def test_run_then_resume_is_a_no_op(tiny_config):
    # Prepare
    cfg_path = tiny_config("bernoulli", federation={"num_clients": 2, "rounds": 2}, train={"max_steps": 2})
    run_dir = Path(load_config(cfg_path).run_dir)
    # Execute
    first = invoke("run", "--config", cfg_path)
    # Assert
    for rnd in range(3):
        assert (run_dir / f"round_{rnd:03d}" / "global.safetensors").is_file()
        metrics = json.loads((run_dir / f"round_{rnd:03d}" / "metrics.json").read_text())
        assert metrics["round"] == rnd and metrics["num_examples"] == 32
    assert not (run_dir / "round_003").exists()
    assert not (run_dir / "round_002" / "clients").exists()
    assert sorted(p.name for p in (run_dir / "round_001" / "clients").iterdir()) == [
        "client_000.safetensors", "client_001.safetensors"]
    log = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(log) == 3
    assert [json.loads(line)["round"] for line in log] == [0, 1, 2]
    assert "metrics.jsonl" in first.output
    # Execute again: every output exists, nothing is rewritten
    before = files_under(run_dir)
    second = invoke("run", "--config", cfg_path)
    after = files_under(run_dir)
    # Assert
    assert after == before
    assert "examples, loss" in first.output  # run reports each trained client ...
    assert "examples, loss" not in second.output  # ... and the resumed run trained none


# --------------------------------------------------------------------------- user errors


def test_unknown_config_key(tiny_config):
    cfg_path = tiny_config(train={"bogus_key": 1})
    result = CliRunner().invoke(app, ["init", "--config", str(cfg_path)])
    assert_user_error(result, "train.bogus_key", str(cfg_path))
    assert not (cfg_path.parent / "run_threshold").exists()


def test_unknown_config_key_via_set(tiny_config):
    cfg_path = tiny_config()
    result = CliRunner().invoke(app, ["init", "--config", str(cfg_path), "--set", "mask.kindd=threshold"])
    assert_user_error(result, "mask.kindd")
    assert not (cfg_path.parent / "run_threshold").exists()


def test_missing_train_file(tiny_config, tmp_path):
    cfg_path = tiny_config()
    invoke("init", "--config", cfg_path)
    missing = tmp_path / "nowhere" / "train.tsv"
    result = CliRunner().invoke(app, [
        "train-client", "--config", str(cfg_path), "--client", "0", "--set", f"data.train_file={missing}"])
    assert_user_error(result, str(missing))
    assert not (tmp_path / "run_threshold" / "round_000" / "clients").exists()


def test_missing_eval_file(tiny_config, tmp_path):
    cfg_path = tiny_config()
    invoke("init", "--config", cfg_path)
    missing = tmp_path / "nowhere" / "dev.tsv"
    result = CliRunner().invoke(app, ["eval", "--config", str(cfg_path), "--set", f"data.eval_file={missing}"])
    assert_user_error(result, str(missing))
    assert not (tmp_path / "run_threshold" / "round_000" / "metrics.json").exists()


def test_error_message_keeps_square_brackets(tiny_config, tmp_path):
    cfg_path = tiny_config()
    invoke("init", "--config", cfg_path)
    missing = tmp_path / "[old]" / "train.tsv"
    result = CliRunner().invoke(app, [
        "train-client", "--config", str(cfg_path), "--client", "0", "--set", f"data.train_file={missing}"])
    assert_user_error(result, str(missing))


def test_error_message_with_closing_tag_text_is_a_user_error(tiny_config, tmp_path):
    cfg_path = tiny_config()
    invoke("init", "--config", cfg_path)
    missing = "[/data]/train.tsv"
    result = CliRunner().invoke(app, [
        "train-client", "--config", str(cfg_path), "--client", "0", "--set", f"data.train_file={missing}"])
    assert_user_error(result, missing)


def test_target_pattern_matching_nothing(tiny_config):
    cfg_path = tiny_config()
    result = CliRunner().invoke(app, ["init", "--config", str(cfg_path), "--set", "mask.target_modules=[nomatch]"])
    assert_user_error(result, "'nomatch'", "mask.target_modules")
    assert not (cfg_path.parent / "run_threshold").exists()


def test_client_file_from_another_round(tiny_config):
    # Prepare
    cfg_path = tiny_config(train={"max_steps": 1})
    run_dir = cfg_path.parent / "run_threshold"
    invoke("init", "--config", cfg_path)
    invoke("train-client", "--config", cfg_path, "--client", "0")
    invoke("aggregate", "--config", cfg_path)
    stale = run_dir / "round_001" / "clients" / "client_000.safetensors"
    stale.parent.mkdir(parents=True)
    shutil.copy(run_dir / "round_000" / "clients" / "client_000.safetensors", stale)
    # Execute
    result = CliRunner().invoke(app, ["aggregate", "--config", str(cfg_path)])
    # Assert
    assert_user_error(result, "round 1: only 0 valid client file(s)", str(stale), "another global")
    assert not (run_dir / "round_002").exists()
    assert not stale.exists() and (run_dir / "round_001" / "rejected" / "client_000.safetensors").exists()


@pytest.fixture(scope="module")
def other_model(tmp_path_factory, tiny_model):
    """The tiny BERT with one target weight perturbed: same architecture, another fingerprint."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    directory = tmp_path_factory.mktemp("other_bert")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model)
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.query.weight[0, 0] += 0.5
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(directory)
    return directory


def test_client_file_from_another_base_model(tmp_path, tiny_model, tiny_data, other_model):
    # Prepare: a second run on the perturbed model uploads a client file
    other_cfg = write_config(tmp_path / "other.yaml", tmp_path / "run_other", other_model, tiny_data,
                             train={"max_steps": 1})
    invoke("init", "--config", other_cfg)
    invoke("train-client", "--config", other_cfg, "--client", "0")
    foreign = tmp_path / "run_other" / "round_000" / "clients" / "client_000.safetensors"
    cfg_path = write_config(tmp_path / "main.yaml", tmp_path / "run_main", tiny_model, tiny_data)
    invoke("init", "--config", cfg_path)
    # Execute
    result = CliRunner().invoke(app, ["aggregate", "--config", str(cfg_path), "--clients", str(foreign)])
    # Assert
    assert_user_error(result, str(foreign), "base model")
    assert not (tmp_path / "run_main" / "round_001").exists()


def test_client_id_out_of_range(tiny_config):
    cfg_path = tiny_config()
    invoke("init", "--config", cfg_path)
    result = CliRunner().invoke(app, ["train-client", "--config", str(cfg_path), "--client", "7"])
    assert_user_error(result, "client 7", "num_clients=3")
    assert not (cfg_path.parent / "run_threshold" / "round_000" / "clients").exists()


def test_eval_refuses_existing_output_without_force(tiny_config):
    # Prepare
    cfg_path = tiny_config("scaling")
    invoke("init", "--config", cfg_path)
    invoke("eval", "--config", cfg_path)
    metrics = cfg_path.parent / "run_scaling" / "round_000" / "metrics.json"
    before = metrics.read_bytes()
    # Execute
    result = CliRunner().invoke(app, ["eval", "--config", str(cfg_path)])
    # Assert
    assert_user_error(result, str(metrics), "--force")
    assert metrics.read_bytes() == before
    invoke("eval", "--config", cfg_path, "--force")
    assert json.loads(metrics.read_text())["round"] == 0


def test_init_twice_refuses(tiny_config):
    cfg_path = tiny_config()
    invoke("init", "--config", cfg_path)
    gl = cfg_path.parent / "run_threshold" / "round_000" / "global.safetensors"
    before = gl.read_bytes()
    result = CliRunner().invoke(app, ["init", "--config", str(cfg_path)])
    assert_user_error(result, str(gl), "--force")
    assert gl.read_bytes() == before
