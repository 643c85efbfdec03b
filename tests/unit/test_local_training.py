"""Learning-rate schedules and batch order of the local training loop."""

import pytest
import torch

from supermask_cli.local_training import batch_order, linear_schedule


def test_linear_schedule_warms_up_then_decays_to_zero():
    factor = linear_schedule(total=6, warmup=2)
    assert [factor(s) for s in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]


def test_constant_schedule_warms_up_then_holds():
    factor = linear_schedule(total=6, warmup=2, decay=False)
    assert [factor(s) for s in range(6)] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]


def test_batch_order_reshuffles_each_pass_and_keeps_the_partial_batch():
    batches = batch_order(5, 2, 4, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [2, 2, 1, 2]
    assert sorted(int(i) for b in batches[:3] for i in b) == [0, 1, 2, 3, 4]


def test_use_dropout_defaults_off_for_bernoulli_only():
    from supermask_cli.local_training import use_dropout

    assert [use_dropout(None, k) for k in ("bernoulli", "threshold", "scaling")] == [False, True, True]
    assert use_dropout(True, "bernoulli") and not use_dropout(False, "threshold")


def test_disable_dropout_makes_the_training_forward_deterministic(tiny_model):
    from supermask_cli.model import load_base_model
    from supermask_cli.local_training import disable_dropout

    model = load_base_model(
        str(tiny_model), revision=None, num_labels=2, regression=False, target_patterns=None, head_names=None, seed=0
    ).model.train()
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    torch.manual_seed(0)
    assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)  # dropout on
    disable_dropout(model)
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
    assert torch.allclose(model(input_ids=ids).logits, model.eval()(input_ids=ids).logits, atol=1e-6)


@pytest.mark.parametrize(("kind", "setting", "expected"), [("bernoulli", None, False), ("threshold", None, True),
                                                             ("bernoulli", True, True)])
def test_train_client_passes_the_dropout_choice(tiny_config, monkeypatch, kind, setting, expected):
    from supermask_cli import steps
    from supermask_cli.steps import training
    from supermask_cli.config import load_config

    seen = []

    def stop(model, layers, head, tokenizer, examples, settings, *args, **kwargs):
        seen.append(settings.dropout)
        raise RuntimeError("stop after settings")

    cfg = load_config(str(tiny_config(kind, train={"dropout": setting})))
    _, cfg = steps.init(cfg)
    monkeypatch.setattr(training, "train_masks", stop)
    with pytest.raises(RuntimeError, match="stop after settings"):
        steps.train_client(cfg, 0)
    assert seen == [expected]


def test_label_log_prior_is_laplace_smoothed_counts():
    import numpy as np

    from supermask_cli.local_training import label_log_prior

    got = label_log_prior(np.array([0, 0, 0, 1]), 2)
    torch.testing.assert_close(got, torch.log(torch.tensor([4 / 6, 2 / 6])))
    unseen = label_log_prior(np.array([0, 0, 0, 1]), 3)  # a class the client never saw: finite
    torch.testing.assert_close(unseen, torch.log(torch.tensor([4 / 7, 2 / 7, 1 / 7])))


def test_logit_adjusted_head_learns_the_balanced_bias_under_label_skew():
    # A bias-only head on a client whose labels are 90% class 0: plain cross-entropy learns the
    # client's prior (b0 - b1 = log 9), the adjusted loss learns no preference (the balanced posterior).
    import math

    from supermask_cli.local_training import adjusted_loss

    labels = torch.tensor([0] * 90 + [1] * 10)
    learned = {}
    for name, shift in (("plain", torch.zeros(2)), ("adjusted", torch.log(torch.tensor([0.9, 0.1])))):
        bias = torch.zeros(2, requires_grad=True)
        opt = torch.optim.LBFGS([bias], lr=1, max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = adjusted_loss(bias.expand(len(labels), 2), labels, shift)
            loss.backward()
            return loss

        opt.step(closure)
        learned[name] = float((bias[0] - bias[1]).detach())
    assert learned["plain"] == pytest.approx(math.log(9), abs=1e-3)
    assert learned["adjusted"] == pytest.approx(0.0, abs=1e-3)


def test_train_client_adjusts_logits_by_its_own_label_prior(tiny_config, monkeypatch):
    from supermask_cli import checkpoint, steps
    from supermask_cli import local_training as train
    from supermask_cli.config import load_config
    from supermask_cli.layout import Layout

    offsets, losses = [], []
    real = train.adjusted_loss

    def spy(logits, labels, offset):
        offsets.append(offset.clone())
        losses.append(real(logits, labels, offset))
        return losses[-1]

    monkeypatch.setattr(train, "adjusted_loss", spy)
    cfg = load_config(str(tiny_config("bernoulli", train={"logit_adjust": 0.5})))
    _, cfg = steps.init(cfg)
    result = steps.train_client(cfg, 1)
    meta = checkpoint.read_meta(Layout(cfg.run_dir).global_path(0))
    examples = steps.client_examples(cfg, 1, meta.labels, meta.pool)
    assert len(offsets) == result.steps  # every step's loss is the adjusted one
    torch.testing.assert_close(offsets[0], 0.5 * train.label_log_prior(examples.labels, 2))


def test_logit_adjust_is_refused_with_example_level_privacy(tiny_config):
    from supermask_cli.config import load_config
    from supermask_cli.errors import SupermaskError

    path = tiny_config("bernoulli", train={"logit_adjust": 1.0},
                       privacy={"mode": "example", "noise_multiplier": 1.0})
    with pytest.raises(SupermaskError, match="train.logit_adjust reads the client's label counts"):
        load_config(str(path))


def test_logit_adjust_on_a_regression_task_is_a_user_error():
    import numpy as np

    from supermask_cli.data import Examples
    from supermask_cli.errors import SupermaskError
    from supermask_cli.local_training import TrainSettings, train_masks

    settings = TrainSettings(batch_size=2, max_steps=1, epochs=1, lr=0.1, head_lr=0.01, warmup_ratio=0.0,
                             schedule="constant", head_weight_decay=0.0, max_grad_norm=None, max_length=8, seed=0,
                             logit_adjust=1.0)
    scores = Examples(texts=[["a", "b"]], labels=np.array([0.5, 4.0], dtype=np.float32))
    with pytest.raises(SupermaskError, match="needs class labels; this task is a regression"):
        train_masks(None, {}, [], None, scores, settings, torch.device("cpu"), "fp32", "test")
