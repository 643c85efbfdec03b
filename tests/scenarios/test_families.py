"""Model families other than BERT: tiny RoBERTa, DistilBERT and GPT-2 built in code.

Each family's default target modules and heads are counted exactly, the full CLI flow runs for
``threshold`` and ``scaling`` masks, round 0 reproduces the base logits exactly, the exported
model equals ``bake_global``'s, and GPT-2 (no pad token of its own) handles padded batches.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import WORDS
from supermask_cli import checkpoint
from supermask_cli import steps
from supermask_cli.cli import app
from supermask_cli.config import load_config
from supermask_cli.mask.layer import MaskedLinear, is_conv1d
from supermask_cli.masked_model import bake_global, trainable_from_global
from supermask_cli.model import load_base_model
from supermask_cli.data import Examples
from supermask_cli.runtime import encode_batch

FAMILIES = ("roberta", "distilbert", "gpt2")
CHARS = list("abcdefghijklmnopqrstuvwxyz")
# Sentences of different lengths, so a batch of them is padded.
SENTENCES = ["good", "the plot was awful and boring", "a film", "love the best fun movie", "hate \" worst"]

EXPECTED_TARGETS = {
    "roberta": [
        f"roberta.encoder.layer.{i}.{m}"
        for i in range(2)
        for m in (
            "attention.self.query", "attention.self.key", "attention.self.value",
            "attention.output.dense", "intermediate.dense", "output.dense",
        )
    ],
    "distilbert": [
        f"distilbert.transformer.layer.{i}.{m}"
        for i in range(2)
        for m in ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "ffn.lin1", "ffn.lin2")
    ],
    "gpt2": [
        f"transformer.h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ],
}
EXPECTED_HEADS = {"roberta": ["classifier"], "distilbert": ["pre_classifier", "classifier"], "gpt2": ["score"]}


# ------------------------------------------------------------------------------------ tiny models


def _bpe_vocab(special: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary: characters, 'Ġ'-prefixed characters, and merge chains spelling WORDS."""
    tokens = [*special, *CHARS, *(f"Ġ{c}" for c in CHARS), "Ġ", '"']
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        current = word[0]
        for ch in word[1:]:
            merges.append((current, ch))
            current += ch
            tokens.append(current)
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}, list(dict.fromkeys(merges))


def build_family_model(directory: Path, family: str) -> Path:
    """A tiny model of ``family`` (hidden 32, 2 layers, 4 heads, intermediate 37) and its tokenizer."""
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if family == "roberta":
        vocab, merges = _bpe_vocab(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        tokenizer = transformers.RobertaTokenizer(vocab=vocab, merges=merges)
        config = transformers.RobertaConfig(
            vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64, num_labels=2,
            pad_token_id=vocab["<pad>"], bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
        )
        model = transformers.RobertaForSequenceClassification(config)
    elif family == "distilbert":
        tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *CHARS, *(f"##{c}" for c in CHARS), '"']
        tokenizer = transformers.DistilBertTokenizer(vocab={t: i for i, t in enumerate(dict.fromkeys(tokens))})
        config = transformers.DistilBertConfig(
            vocab_size=len(tokenizer), dim=32, n_layers=2, n_heads=4, hidden_dim=37,
            max_position_embeddings=64, num_labels=2, pad_token_id=0,
        )
        model = transformers.DistilBertForSequenceClassification(config)
    elif family == "gpt2":
        vocab, merges = _bpe_vocab(["<|endoftext|>"])
        tokenizer = transformers.GPT2Tokenizer(vocab=vocab, merges=merges)
        assert tokenizer.pad_token is None  # GPT-2 has none: load_base_model must supply one
        config = transformers.GPT2Config(
            vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=4, n_inner=37, n_positions=64,
            num_labels=2, bos_token_id=0, eos_token_id=0,
        )
        model = transformers.GPT2ForSequenceClassification(config)
    else:  # pragma: no cover
        raise ValueError(family)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def family_models(tmp_path_factory) -> dict[str, Path]:
    return {f: build_family_model(tmp_path_factory.mktemp(f"tiny_{f}"), f) for f in FAMILIES}


def load(path: Path, num_labels: int = 2):
    return load_base_model(
        str(path), revision=None, num_labels=num_labels, regression=False,
        target_patterns=None, head_names=None, seed=0,
    )


def invoke(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{args}: exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result.output


def logits_of(model, tokenizer, sentences=SENTENCES) -> torch.Tensor:
    examples = Examples(texts=[list(sentences)], labels=np.zeros(len(sentences), dtype=np.int64))
    batch = encode_batch(tokenizer, examples, np.arange(len(sentences)), 16, torch.device("cpu"))
    batch.pop("labels")
    model.eval()
    with torch.no_grad():
        return model(**batch).logits.float()


# ------------------------------------------------------------------------- default targets and heads


@pytest.mark.parametrize("family", FAMILIES)
def test_default_targets_and_heads(family_models, family):
    base = load(family_models[family])
    assert base.heads == EXPECTED_HEADS[family]
    assert base.targets == EXPECTED_TARGETS[family]
    assert len(base.targets) == {"roberta": 12, "distilbert": 12, "gpt2": 8}[family]
    assert sum(base.target_counts.values()) == len(base.targets)
    # no target lies under a head, and every head parameter is in head_state
    assert not any(t == h or t.startswith(h + ".") for t in base.targets for h in base.heads)
    head_params = base.head_state()
    assert head_params and all(any(n.startswith(h + ".") for h in base.heads) for n in head_params)
    for h in base.heads:
        assert any(n.startswith(h + ".") for n in head_params), h
    # odd sizes reach the shapes: intermediate 37 shows up in the MLP targets
    shapes = base.target_shapes()
    assert any(37 in s for s in shapes.values())
    if family == "gpt2":
        assert all(is_conv1d(base.model.get_submodule(t)) for t in base.targets)
        assert shapes["transformer.h.0.attn.c_attn"] == [32, 96]  # Conv1D: (in, out)
        assert shapes["transformer.h.0.mlp.c_fc"] == [32, 37]
    if family == "roberta":
        assert not any("pooler" in n for n, _ in base.model.named_modules())


def test_gpt2_gets_a_pad_token_and_padded_batches_match_single_examples(family_models):
    base = load(family_models["gpt2"])
    tok = base.tokenizer
    assert tok.pad_token is not None and tok.pad_token_id is not None
    assert base.model.config.pad_token_id == tok.pad_token_id
    examples = Examples(texts=[SENTENCES], labels=np.zeros(len(SENTENCES), dtype=np.int64))
    batch = encode_batch(tok, examples, np.arange(len(SENTENCES)), 16, torch.device("cpu"))
    assert (batch["attention_mask"] == 0).any(), "the test sentences must produce padding"
    batched = logits_of(base.model, tok)
    for i, sentence in enumerate(SENTENCES):
        single = logits_of(base.model, tok, [sentence])
        torch.testing.assert_close(batched[i], single[0], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- exact start at round 0


@pytest.mark.parametrize("kind", ["threshold", "scaling"])
@pytest.mark.parametrize("family", FAMILIES)
def test_round0_masked_model_reproduces_base_logits(family_models, tiny_config, family, kind):
    cfg = load_config(tiny_config(kind, model={"name": str(family_models[family]), "max_length": 16},
                                  federation={"num_clients": 2, "rounds": 1}))
    result, cfg = steps.init(cfg)
    gl = steps.load_global(result.path)
    assert gl.meta.kind == kind and sorted(gl.meta.targets) == sorted(EXPECTED_TARGETS[family])
    plain = load(family_models[family])
    expected = logits_of(plain.model, plain.tokenizer)

    masked = steps.load_base(cfg, gl.meta.labels)
    layers, head_params = trainable_from_global(masked, gl, tau=cfg.mask.threshold, init_score=cfg.mask.init_score)
    assert sorted(layers) == sorted(EXPECTED_TARGETS[family])
    assert all(isinstance(masked.model.get_submodule(n), MaskedLinear) for n in layers)
    assert head_params and all(p.requires_grad for p in head_params)
    got = logits_of(masked.model, masked.tokenizer)
    assert torch.equal(got, expected), (got - expected).abs().max()


# ------------------------------------------------------------------------------------ full CLI flow


@pytest.mark.parametrize("kind", ["threshold", "scaling"])
@pytest.mark.parametrize("family", FAMILIES)
def test_cli_flow_and_export(family_models, tiny_config, tmp_path, family, kind):
    config = tiny_config(kind, model={"name": str(family_models[family]), "max_length": 16},
                         federation={"num_clients": 2, "rounds": 1}, train={"batch_size": 8, "max_steps": 2, "lr": 0.01})
    cfg = load_config(config)
    run_dir = Path(cfg.run_dir)
    out = invoke("init", "-c", config)
    assert f"{len(EXPECTED_TARGETS[family])} target modules" in out
    for client in range(2):
        invoke("train-client", "-c", config, "--client", client)
    invoke("aggregate", "-c", config)
    invoke("eval", "-c", config)
    g1 = run_dir / "round_001" / "global.safetensors"
    metrics = json.loads((run_dir / "round_001" / "metrics.json").read_text())
    assert metrics["round"] == 1 and metrics["num_examples"] == 32 and metrics["clients"] == 2
    assert metrics["kind"] == kind and 0.0 <= metrics["accuracy"] <= 1.0 and np.isfinite(metrics["loss"])

    gl = steps.load_global(str(g1))
    assert sorted(gl.meta.targets) == sorted(EXPECTED_TARGETS[family])
    assert {k.split(".")[0] for k in gl.group("head")} == set(EXPECTED_HEADS[family])
    assert sum(c.num_examples for c in gl.meta.aggregation.clients) == 96
    if kind == "scaling":
        # one scaling entry per output feature (Conv1D: weight is (in, out))
        for name, target in gl.meta.targets.items():
            assert gl.tensors[f"scale/{name}"].shape == (target.out_features,)
        assert any(not torch.equal(gl.tensors[f"scale/{n}"], torch.ones_like(gl.tensors[f"scale/{n}"]))
                   for n in gl.meta.targets), "training moved no scaling vector"

    export_dir = tmp_path / f"export_{family}_{kind}"
    invoke("export", "--checkpoint", g1, "--out", export_dir, "-c", config)
    import transformers

    exported = transformers.AutoModelForSequenceClassification.from_pretrained(export_dir)
    exported_tok = transformers.AutoTokenizer.from_pretrained(export_dir)
    assert exported.config.model_type == family
    assert exported_tok.pad_token is not None  # GPT-2's borrowed pad token travels with the export
    assert exported.config.id2label == {0: "negative", 1: "positive"}

    baked = bake_global(steps.load_base(steps.resolved(cfg, gl.meta.labels), gl.meta.labels), gl)
    expected = logits_of(baked, exported_tok)
    got = logits_of(exported, exported_tok)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # export without a config (model, kind and targets from the file's metadata) gives the same model
    invoke("export", "--checkpoint", g1, "--out", tmp_path / "export_no_config")
    again = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "export_no_config")
    torch.testing.assert_close(logits_of(again, exported_tok), expected, atol=1e-5, rtol=1e-5)
    # the baked model is not the base model: training changed something
    plain = load(family_models[family])
    assert not torch.allclose(logits_of(plain.model, plain.tokenizer), expected, atol=1e-7)
    info = json.loads(invoke("inspect", g1, "--json"))
    assert info["num_targets"] == len(EXPECTED_TARGETS[family])
    assert info["labels"] == ["negative", "positive"]
    assert checkpoint.read_meta(str(g1)).round == 1
