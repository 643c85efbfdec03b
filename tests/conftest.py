"""Shared fixtures: a tiny BERT built in code and saved to disk, tiny TSV data, a tiny config."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core (`-n auto` in README's test command): one intra-op thread each,
    # inherited by the CLI processes the tests start, instead of every process fighting for all cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import random
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from transformers.pytorch_utils import Conv1D

WORDS = ["good", "great", "fun", "love", "best", "bad", "awful", "boring", "hate", "worst", "the", "movie", "was", "a", "plot", "film"]
POSITIVE = WORDS[:5]
NEGATIVE = WORDS[5:10]
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2"


def seeded_base(family: str, n_in: int, n_out: int, seed: int) -> nn.Module:
    """A small target layer with seeded weights: ``nn.Linear`` (default init) or GPT-2's ``Conv1D``
    (weight (n_in, n_out), normal init of weight and bias)."""
    torch.manual_seed(seed)
    if family == "linear":
        return nn.Linear(n_in, n_out)
    layer = Conv1D(n_out, n_in)
    nn.init.normal_(layer.weight)
    nn.init.normal_(layer.bias)
    return layer


def build_tiny_model(directory: Path, model_type: str = "bert") -> Path:
    """A tiny model (odd sizes catch shape bugs) and its tokenizer, saved with save_pretrained."""
    import torch
    import transformers
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    transformers.logging.set_verbosity_error()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz"]
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    tokenizer = BertTokenizer(vocab={tok: i for i, tok in enumerate(vocab)})
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=64, num_labels=2,
    )
    model = BertForSequenceClassification(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_tiny_data(directory: Path, n_train: int = 96, n_eval: int = 32, seed: int = 0) -> tuple[Path, Path]:
    """Sentiment-like TSVs: positive words -> 1, negative words -> 0 (with a bare quote to test parsing)."""
    rng = random.Random(seed)

    def rows(n: int) -> list[str]:
        out = []
        for i in range(n):
            label = i % 2
            words = rng.sample(POSITIVE if label else NEGATIVE, 2) + rng.sample(WORDS[10:], 2)
            rng.shuffle(words)
            out.append(f"{' '.join(words)} \"\t{label}")
        return out

    train, dev = directory / "train.tsv", directory / "dev.tsv"
    train.write_text("sentence\tlabel\n" + "\n".join(rows(n_train)) + "\n")
    dev.write_text("sentence\tlabel\n" + "\n".join(rows(n_eval)) + "\n")
    return train, dev


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> tuple[Path, Path]:
    return write_tiny_data(tmp_path_factory.mktemp("tiny_data"))


def tiny_config_dict(run_dir: Path, model: Path, data: tuple[Path, Path], kind: str = "threshold") -> dict:
    return {
        "run_dir": str(run_dir),
        "seed": 0,
        "model": {"name": str(model), "max_length": 16},
        "task": "sst2",
        "data": {"source": "local", "train_file": str(data[0]), "eval_file": str(data[1])},
        "mask": {"kind": kind, "threshold": 0.01, "init_score": 0.02},
        "federation": {"num_clients": 3, "rounds": 2},
        "train": {"batch_size": 8, "max_steps": 4, "lr": 0.01},
        "eval": {"batch_size": 16},
    }


@pytest.fixture
def tiny_config(tmp_path, tiny_model, tiny_data):
    """Write a tiny config file; returns a factory ``(kind='threshold', **section_overrides) -> Path``."""

    def make(kind: str = "threshold", **overrides: dict) -> Path:
        raw = tiny_config_dict(tmp_path / f"run_{kind}", tiny_model, tiny_data, kind)
        for section, values in overrides.items():
            if isinstance(values, dict):
                raw.setdefault(section, {}).update(values)
            else:
                raw[section] = values
        path = tmp_path / f"{kind}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    return make


def aggregate_stacked(clients, weights, kind, rule="mean", *, trim_ratio=0.1, max_share=1.0, previous=None,
                      server=None, bayes_prior=1.0, bayes_reset=False):
    """Decoded client tensors (all in memory) -> global tensors with the rules' pure functions:
    ``reduce_stacked`` then ``finish`` (the reducer's stacked path without a config)."""
    from supermask_cli import rules
    from supermask_cli.server_opt import ServerOptimizer

    reduced = rules.reduce_stacked(clients, weights, rule, trim_ratio=trim_ratio, max_share=max_share)
    bayes = (len(clients), bayes_prior, bayes_reset) if rule == "bayes" else None
    return rules.finish(reduced, previous or {}, kind, server=server or ServerOptimizer(), bayes=bayes)
