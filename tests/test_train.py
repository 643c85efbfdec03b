"""Learning-rate schedules and batch order of the local training loop."""

import pytest
import torch

from supermask_cli.train import batch_order, linear_schedule


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
    from supermask_cli.train import use_dropout

    assert [use_dropout(None, k) for k in ("bernoulli", "threshold", "scaling")] == [False, True, True]
    assert use_dropout(True, "bernoulli") and not use_dropout(False, "threshold")


def test_disable_dropout_makes_the_training_forward_deterministic(tiny_model):
    from supermask_cli.model import load_base_model
    from supermask_cli.train import disable_dropout

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
