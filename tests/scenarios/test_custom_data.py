"""Custom datasets given only by file paths and field names (no GLUE ``task``).

A 3-class CSV / JSONL dataset with string labels through ``supermask run`` and ``report``,
per-client files from ``data.client_train_file``, and a custom regression dataset.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import NEGATIVE, POSITIVE, WORDS
from supermask_cli import steps
from supermask_cli.cli import app
from supermask_cli.config import load_config
from supermask_cli.predict import predict
from supermask_cli.masked_model import bake_global

LABELS = ["neg", "neutral", "pos"]  # sorted: what init infers from the strings
NEUTRAL = WORDS[10:]
TRAIN = {"batch_size": 8, "max_steps": 2, "lr": 0.01}


def invoke(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{args}: exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result.output


def inspect_json(path: Path) -> dict:
    return json.loads(invoke("inspect", path, "--json"))


def sentiment_frame(n: int, seed: int, start: int = 0) -> pd.DataFrame:
    """Rows cycling pos / neg / neutral (so file order differs from sorted label order); texts
    carry commas and quotes to exercise CSV quoting."""
    rng = random.Random(seed)
    order = ["pos", "neg", "neutral"]
    rows = []
    for i in range(start, start + n):
        label = order[i % 3]
        pool = {"pos": POSITIVE, "neg": NEGATIVE, "neutral": NEUTRAL}[label]
        words = rng.sample(pool, 2) + rng.sample(NEUTRAL, 1)
        rng.shuffle(words)
        rows.append({"text": f'{words[0]}, "{words[1]}" {words[2]}', "sentiment": label})
    return pd.DataFrame(rows)


def write_frame(df: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_json(path, orient="records", lines=True)
    return path


@pytest.fixture(scope="module")
def sentiment_files(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("custom_data")
    train, dev = sentiment_frame(48, seed=1), sentiment_frame(24, seed=2)
    return {
        ext: (write_frame(train, root / f"train.{ext}"), write_frame(dev, root / f"dev.{ext}"))
        for ext in ("csv", "jsonl")
    }


@pytest.fixture(scope="module")
def headless_model(tmp_path_factory, tiny_model) -> Path:
    """The conftest tiny BERT saved without its 2-class classifier (like a pretrained hub checkpoint),
    so any number of labels gets a freshly initialised head."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    directory = tmp_path_factory.mktemp("tiny_bert_headless")
    BertForSequenceClassification.from_pretrained(tiny_model).bert.save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(directory)
    return directory


def custom_config(tiny_config, data: dict, model: Path, kind: str = "threshold", clients: int = 2) -> Path:
    """The conftest tiny config without a task: every data definition comes from ``data``."""
    return tiny_config(
        kind, task=None, model={"name": str(model), "max_length": 16},
        data={"source": "auto", "train_file": None, "eval_file": None, **data},
        federation={"num_clients": clients, "rounds": 1}, train=TRAIN,
    )


def macro_f1(preds: np.ndarray, labels: np.ndarray) -> float:
    """Independent macro F1 over the classes present in labels or predictions."""
    scores = []
    for c in sorted(set(labels.tolist()) | set(preds.tolist())):
        tp = int(((preds == c) & (labels == c)).sum())
        fp = int(((preds == c) & (labels != c)).sum())
        fn = int(((preds != c) & (labels == c)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(scores))


# ------------------------------------------------------------------------------ 3 classes, run + report


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_three_class_custom_run_and_report(tiny_config, headless_model, sentiment_files, ext):
    train, dev = sentiment_files[ext]
    config = custom_config(
        tiny_config,
        {"train_file": str(train), "eval_file": str(dev), "text_fields": ["text"], "label_field": "sentiment"},
        headless_model,
    )
    raw = yaml.safe_load(config.read_text())
    assert raw["task"] is None and "label_names" not in raw["data"]
    cfg = load_config(config)
    run_dir = Path(cfg.run_dir)

    invoke("run", "-c", config)
    out = invoke("report", run_dir)
    assert (run_dir / "report.png").stat().st_size > 0
    assert "accuracy" in out

    # label names: inferred sorted at init, recorded in every file and in the run's config.yaml
    for path in (run_dir / "round_000" / "global.safetensors", run_dir / "round_001" / "global.safetensors",
                 run_dir / "round_000" / "clients" / "client_000.safetensors"):
        assert inspect_json(path)["labels"] == LABELS, path
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert recorded["data"]["label_names"] == LABELS
    assert recorded["data"]["text_fields"] == ["text"] and recorded["data"]["label_field"] == "sentiment"
    assert recorded["task"] is None
    gl = steps.load_global(str(run_dir / "round_001" / "global.safetensors"))
    assert gl.tensors["head/classifier.weight"].shape == (3, 32)  # three outputs
    assert gl.meta.num_examples == 48

    # string labels map to ids by the sorted names
    examples = steps.eval_examples(cfg, LABELS)
    frame = pd.read_csv(dev) if ext == "csv" else pd.read_json(dev, lines=True)
    assert examples.labels.tolist() == [LABELS.index(s) for s in frame["sentiment"]]
    assert examples.texts[0] == frame["text"].tolist()  # quotes and commas survive

    # metrics: accuracy and a 3-class F1 (macro), never binary F1 (class 1 = "neutral" only)
    assert steps.metric_names(steps.resolved(cfg, LABELS)) == ["accuracy", "f1_macro"]
    for rnd in (0, 1):
        metrics = json.loads((run_dir / f"round_{rnd:03d}" / "metrics.json").read_text())
        assert metrics["num_examples"] == 24
        assert "f1" not in metrics
        for key in ("accuracy", "f1_macro", "loss"):
            assert np.isfinite(metrics[key]), key
        assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["f1_macro"] <= 1.0
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in log] == [0, 1]

    # the recorded macro F1 is the real one for the round-1 model's predictions
    base = steps.load_base(steps.resolved(cfg, LABELS), LABELS)
    model = bake_global(base, gl)
    logits, loss = predict(model, base.tokenizer, examples, batch_size=16, max_length=16,
                           device=torch.device("cpu"), precision="fp32")
    assert logits.shape == (24, 3)
    preds = logits.argmax(axis=1)
    assert metrics["accuracy"] == pytest.approx(float((preds == examples.labels).mean()), abs=1e-9)
    assert metrics["f1_macro"] == pytest.approx(macro_f1(preds, examples.labels), abs=1e-9)
    assert metrics["loss"] == pytest.approx(loss, rel=1e-5)


def test_three_class_eval_command_matches_run(tiny_config, headless_model, sentiment_files):
    """`supermask eval` (unresolved config) scores a 3-class custom dataset with the same metrics as `run`."""
    train, dev = sentiment_files["csv"]
    config = custom_config(
        tiny_config,
        {"train_file": str(train), "eval_file": str(dev), "text_fields": ["text"], "label_field": "sentiment"},
        headless_model,
    )
    invoke("init", "-c", config)
    invoke("eval", "-c", config)
    metrics = json.loads((Path(load_config(config).run_dir) / "round_000" / "metrics.json").read_text())
    assert "accuracy" in metrics and "f1_macro" in metrics and "f1" not in metrics


def test_binary_custom_eval_command_reports_binary_f1(tiny_config, headless_model, tmp_path):
    df = sentiment_frame(24, seed=3)
    df = df[df["sentiment"] != "neutral"]
    train, dev = write_frame(df, tmp_path / "bin_train.csv"), write_frame(df, tmp_path / "bin_dev.csv")
    config = custom_config(
        tiny_config,
        {"train_file": str(train), "eval_file": str(dev), "text_fields": ["text"], "label_field": "sentiment"},
        headless_model,
    )
    cfg = load_config(config)
    assert steps.metric_names(steps.resolved(cfg, ["neg", "pos"])) == ["accuracy", "f1"]  # what run uses
    invoke("init", "-c", config)
    invoke("eval", "-c", config)
    metrics = json.loads((Path(cfg.run_dir) / "round_000" / "metrics.json").read_text())
    assert "f1" in metrics, sorted(metrics)


def test_three_class_data_on_a_two_class_checkpoint(tiny_config, tiny_model, sentiment_files):
    train, dev = sentiment_files["csv"]
    config = custom_config(
        tiny_config,
        {"train_file": str(train), "eval_file": str(dev), "text_fields": ["text"], "label_field": "sentiment"},
        tiny_model,  # BertForSequenceClassification saved with num_labels=2
    )
    result = CliRunner().invoke(app, ["init", "-c", str(config)])
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output} {result.exception!r}"
    gl = steps.load_global(str(Path(load_config(config).run_dir) / "round_000" / "global.safetensors"))
    assert gl.tensors["head/classifier.weight"].shape == (3, 32)


# ------------------------------------------------------------------------------ per-client files


def test_client_train_file_template(tiny_config, headless_model, sentiment_files, tmp_path):
    counts = {0: 10, 1: 17}
    start = 0
    for client, n in counts.items():
        write_frame(sentiment_frame(n, seed=10 + client, start=start), tmp_path / f"client_{client}.csv")
        start += n
    names = ["pos", "neutral", "neg"]  # explicit, deliberately not sorted: kept as given
    config = custom_config(tiny_config, {
        "client_train_file": str(tmp_path / "client_{client}.csv"),
        "eval_file": str(sentiment_files["csv"][1]),
        "text_fields": ["text"], "label_field": "sentiment", "label_names": names,
    }, headless_model)
    run_dir = Path(load_config(config).run_dir)
    invoke("init", "-c", config)
    assert inspect_json(run_dir / "round_000" / "global.safetensors")["labels"] == names
    for client, n in counts.items():
        invoke("train-client", "-c", config, "--client", client)
        info = inspect_json(run_dir / "round_000" / "clients" / f"client_{client:03d}.safetensors")
        assert info["client"] == client and info["num_examples"] == n and info["labels"] == names
    invoke("aggregate", "-c", config)
    invoke("eval", "-c", config)
    g1 = inspect_json(run_dir / "round_001" / "global.safetensors")
    assert g1["num_examples"] == sum(counts.values())
    assert {c["client"]: c["num_examples"] for c in g1["aggregation"]["clients"]} == counts
    metrics = json.loads((run_dir / "round_001" / "metrics.json").read_text())
    assert np.isfinite(metrics["accuracy"]) and np.isfinite(metrics["f1_macro"])


def test_client_train_file_needs_label_names(tiny_config, headless_model, tmp_path):
    write_frame(sentiment_frame(6, seed=0), tmp_path / "client_0.csv")
    config = custom_config(tiny_config, {
        "client_train_file": str(tmp_path / "client_{client}.csv"), "eval_file": str(tmp_path / "client_0.csv"),
        "text_fields": ["text"], "label_field": "sentiment",
    }, headless_model)
    result = CliRunner().invoke(app, ["init", "-c", str(config)])
    assert result.exit_code == 2, result.output
    assert "data.label_names" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------------- regression


def test_custom_regression(tiny_config, headless_model, tmp_path):
    rng = random.Random(5)

    def frame(n: int) -> pd.DataFrame:
        rows = []
        for _ in range(n):
            k = rng.randint(0, 2)
            words = rng.sample(POSITIVE, k) + rng.sample(NEGATIVE, 2 - k) + rng.sample(NEUTRAL, 1)
            rng.shuffle(words)
            rows.append({"review": " ".join(words), "score": round(k * 2.5 + rng.uniform(-0.3, 0.3), 3)})
        return pd.DataFrame(rows)

    train = write_frame(frame(40), tmp_path / "reg_train.jsonl")
    dev = write_frame(frame(20), tmp_path / "reg_dev.csv")
    config = custom_config(tiny_config, {
        "train_file": str(train), "eval_file": str(dev),
        "text_fields": ["review"], "label_field": "score", "regression": True,
    }, headless_model, kind="scaling")
    run_dir = Path(load_config(config).run_dir)
    out = invoke("init", "-c", config)
    assert "regression" in out
    for client in range(2):
        invoke("train-client", "-c", config, "--client", client)
    invoke("aggregate", "-c", config)
    invoke("eval", "-c", config)
    info = inspect_json(run_dir / "round_001" / "global.safetensors")
    assert info["labels"] is None and info["num_examples"] == 40
    gl = steps.load_global(str(run_dir / "round_001" / "global.safetensors"))
    assert gl.tensors["head/classifier.weight"].shape == (1, 32)
    metrics = json.loads((run_dir / "round_001" / "metrics.json").read_text())
    assert "accuracy" not in metrics and "f1" not in metrics and "f1_macro" not in metrics
    for key in ("pearson", "spearman", "loss"):
        assert np.isfinite(metrics[key]), key
    assert -1.0 <= metrics["pearson"] <= 1.0 and -1.0 <= metrics["spearman"] <= 1.0
    assert metrics["pearson"] != 0.0  # 0.0 would mean "undefined" (constant predictions)
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert recorded["data"]["regression"] is True and recorded["data"]["label_names"] is None
