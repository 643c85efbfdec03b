"""Write a randomly initialised BERT-base-sized sequence classifier (bert-base-uncased's
architecture: hidden 768, 12 layers, 12 heads, intermediate 3072, vocab 30522) to a directory that
``model.name`` can point at. Speed, memory and file sizes do not depend on the weights' values, and
no BERT-base weights are installable offline; the tokenizer is all-MiniLM-L6-v2's, which is
bert-base-uncased's WordPiece vocabulary (30,522 tokens).

    python benchmarks/bert_base_random.py --out /tmp/bert-base-random
    python benchmarks/speed_memory.py --model /tmp/bert-base-random --kind bernoulli --steps 1 --reps 3 --skip eval
    python benchmarks/aggregate_scale.py --config configs/sst2_minilm_offline.yaml \\
        --set model.name=/tmp/bert-base-random --clients 10 100 --encoding sparse --out-dir /tmp/agg_bert
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from supermask_cli.model import resolve_model_path

SIZES = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
         "vocab_size": 30522, "max_position_embeddings": 512, "type_vocab_size": 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = BertForSequenceClassification(BertConfig(**SIZES, num_labels=2))
    model.save_pretrained(args.out)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("packaged:all-MiniLM-L6-v2"))
    assert tokenizer.vocab_size == SIZES["vocab_size"], tokenizer.vocab_size
    tokenizer.save_pretrained(args.out)
    print(json.dumps({"out": args.out, "parameters": sum(p.numel() for p in model.parameters()), **SIZES}))


if __name__ == "__main__":
    main()
