"""Learning end to end: each mask kind, centralized and federated through the step API, must take
a keyword task from chance to well above it — and must not when what it trains is frozen.

The head is frozen (``train.head_lr`` ≈ 0) in every test here, so only the masks (scores or
scaling vectors) can learn: a head alone can learn this task, and would hide scores that never
move. The tiny BERT is re-initialised with a wider weight range (0.1) than conftest's (0.02) so
that a random network holds subnetworks a mask can select."""

from __future__ import annotations

import pytest
import torch
import yaml
from transformers import BertConfig, BertForSequenceClassification

from conftest import build_tiny_model, tiny_config_dict, write_tiny_data
from supermask_cli import steps
from supermask_cli.config import load_config

FROZEN = 1e-9  # a learning rate that moves nothing in 48 steps (config keys must be > 0)
# Score / scaling-vector learning rates that learn the task in a few dozen steps.
MASK_LR = {"bernoulli": 0.3, "threshold": 0.002, "scaling": 0.05}
CHANCE_LIMIT = 0.65  # 64 balanced eval examples: frozen runs stay near 0.5
LEARNED = 0.8


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    """(model dir, (train, eval) TSVs): a tiny BERT with weights N(0, 0.1), 96 train and 64 eval rows."""
    root = tmp_path_factory.mktemp("learnable")
    model_dir = build_tiny_model(root / "model")
    config = BertConfig.from_pretrained(model_dir)
    config.initializer_range = 0.1
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(model_dir)
    return model_dir, write_tiny_data(root, n_train=96, n_eval=64)


def _config(tmp_path, learnable, kind: str, *, clients: int, rounds: int, steps_per_round: int, lr: float):
    model_dir, data = learnable
    raw = tiny_config_dict(tmp_path / f"run_{kind}", model_dir, data, kind)
    raw["federation"] = {"num_clients": clients, "rounds": rounds}
    raw["train"] = {"batch_size": 8, "max_steps": steps_per_round, "lr": lr, "head_lr": FROZEN}
    raw["eval"] = {"batch_size": 64}
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def _accuracies(cfg) -> list[float]:
    """init, then per round: every client trains, aggregate, evaluate; eval accuracy per round."""
    _, cfg = steps.init(cfg)
    accuracies = [steps.evaluate(cfg, rnd=0)[0]["accuracy"]]
    for rnd in range(cfg.federation.rounds):
        for client in range(cfg.federation.num_clients):
            steps.train_client(cfg, client, rnd=rnd)
        steps.aggregate(cfg, rnd=rnd)
        accuracies.append(steps.evaluate(cfg, rnd=rnd + 1)[0]["accuracy"])
    return accuracies


@pytest.mark.parametrize("kind", ["bernoulli", "threshold", "scaling"])
def test_masks_alone_learn_the_keyword_task_centralized(tmp_path, learnable, kind):
    cfg = _config(tmp_path, learnable, kind, clients=1, rounds=1, steps_per_round=48, lr=MASK_LR[kind])
    before, after = _accuracies(cfg)
    assert before <= CHANCE_LIMIT
    assert after >= LEARNED + 0.05


@pytest.mark.parametrize("kind", ["bernoulli", "threshold", "scaling"])
def test_masks_alone_learn_the_keyword_task_federated(tmp_path, learnable, kind):
    cfg = _config(tmp_path, learnable, kind, clients=3, rounds=2, steps_per_round=16, lr=MASK_LR[kind])
    accuracies = _accuracies(cfg)
    assert accuracies[0] <= CHANCE_LIMIT
    assert accuracies[-1] >= LEARNED


@pytest.mark.parametrize("kind", ["bernoulli", "threshold", "scaling"])
def test_nothing_is_learned_when_masks_and_head_are_frozen(tmp_path, learnable, kind):
    # Control: the same run with the mask's learning rate ≈ 0 stays at chance, so the tests above
    # measure what the masks learn, not the data or the pipeline.
    cfg = _config(tmp_path, learnable, kind, clients=1, rounds=1, steps_per_round=48, lr=FROZEN)
    before, after = _accuracies(cfg)
    assert before <= CHANCE_LIMIT
    assert after <= CHANCE_LIMIT
