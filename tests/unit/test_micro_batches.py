"""Micro-batches (``train.micro_batch_size``): length-sorted passes over one batch give the one-pass
gradient, plain and DP-SGD's clipped sum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from supermask_cli.data import Examples
from supermask_cli.local_training import TrainSettings, micro_batches, setup, step, text_lengths
from supermask_cli.privacy import dpsgd

from test_privacy import TEXTS, _masked_model

LABELS = [1, 0, 1, 1, 0]


def test_micro_batches_sort_by_length_split_evenly_and_keep_every_index():
    lengths = np.array([5, 1, 9, 3, 7, 2, 8])
    indices = np.array([6, 0, 2, 4, 1])
    parts = micro_batches(indices, lengths, 2)
    assert [p.tolist() for p in parts] == [[1, 0], [4, 6], [2]]  # lengths 1 5 | 7 8 | 9
    assert micro_batches(indices, lengths, 5)[0] is indices  # not below the batch: one pass, order kept
    assert micro_batches(indices, lengths, None)[0] is indices
    assert sorted(np.concatenate(micro_batches(np.arange(7), lengths, 3)).tolist()) == list(range(7))


def test_text_lengths_add_up_every_text_field():
    examples = Examples(texts=[["ab", "c"], ["dddd", ""]], labels=np.array([0, 1]))
    assert text_lengths(examples).tolist() == [6, 1]


def test_private_micro_batches_add_up_to_the_clipped_sum_of_one_pass(tiny_model):
    base, params = _masked_model(tiny_model, "threshold")
    batch = base.tokenizer(TEXTS, padding=True, return_tensors="pt")
    batch["labels"] = torch.tensor(LABELS)
    privacy = dpsgd.ExamplePrivacy(0.0, 0.05, 0.5)  # a bound below most examples' norms: clipping matters
    one = dpsgd.PrivateStep(base.model, params, privacy, len(TEXTS), "cpu")
    one.backward(base.model(**batch).loss, len(TEXTS))
    one.close()
    expected = [p.grad.clone() for p in params]

    parts = dpsgd.PrivateStep(base.model, params, privacy, len(TEXTS), "cpu")
    base.model.zero_grad(set_to_none=True)
    for rows in ([2, 0, 3], [4, 1]):
        part = base.tokenizer([TEXTS[i] for i in rows], padding=True, return_tensors="pt")
        part["labels"] = torch.tensor([LABELS[i] for i in rows])
        parts.accumulate(base.model(**part).loss * (len(rows) / len(TEXTS)), len(TEXTS))
    parts.finish(len(TEXTS))
    parts.close()
    for p, e in zip(params, expected):
        assert torch.allclose(p.grad, e, atol=1e-7, rtol=1e-4), p.shape
    assert any(float(e.abs().sum()) > 0 for e in expected)


@pytest.mark.parametrize("private", [False, True])
def test_a_micro_batched_step_takes_the_gradient_of_one_pass(tiny_model, private):
    examples = Examples(texts=[TEXTS * 2], labels=np.array(LABELS * 2))
    seen = {}
    for size in (None, 3):
        base, params = _masked_model(tiny_model, "threshold")
        layers = {n: m for n, m in base.model.named_modules() if hasattr(m, "scores")}
        head = [p for n, p in base.model.named_parameters() if n.startswith("classifier.")]
        settings = TrainSettings(batch_size=10, max_steps=1, epochs=1, lr=0.1, head_lr=0.1, warmup_ratio=0.0,
                                 schedule="constant", head_weight_decay=0.0, max_grad_norm=None, max_length=16,
                                 seed=0, dropout=False, micro_batch_size=size)
        privacy = dpsgd.ExamplePrivacy(0.0, 0.05, 1.0) if private else None
        state = setup(base.model, layers, head, base.tokenizer, examples, settings, torch.device("cpu"), "fp32", privacy)
        grads = []
        for opt in state.optimizers:
            opt.register_step_pre_hook(lambda o, *_: grads.extend(p.grad.clone() for g in o.param_groups for p in g["params"]))
        seen[size] = (step(state, np.arange(10)), grads)
    (loss_one, one), (loss_parts, parts) = seen[None], seen[3]
    assert loss_parts == pytest.approx(loss_one, rel=1e-5)
    assert len(one) == len(parts) > 0
    for a, b in zip(one, parts):
        assert torch.allclose(a, b, atol=1e-7, rtol=1e-4), a.shape
