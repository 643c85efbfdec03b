"""supermask_cli.model: loading the frozen base model, packaged weights, the fingerprint."""

from __future__ import annotations

import pytest
import torch

from supermask_cli.errors import SupermaskError
from supermask_cli.model import load_base_model, resolve_model_path


def _load(path, **kw):
    args = dict(revision=None, num_labels=2, regression=False, target_patterns=None, head_names=None, seed=0)
    args.update(kw)
    return load_base_model(str(path), **args)


def test_everything_is_frozen_and_targets_exclude_the_head(tiny_model):
    base = _load(tiny_model)
    assert not any(p.requires_grad for p in base.model.parameters())
    assert base.targets and not any(t.startswith("classifier") for t in base.targets)
    assert set(base.target_shapes()) == set(base.targets)
    assert all(k.startswith("classifier.") for k in base.head_state())


def test_fingerprint_is_a_function_of_the_target_weights(tiny_model):
    a, b = _load(tiny_model), _load(tiny_model, seed=5)
    assert a.fingerprint() == b.fingerprint()  # the seed only draws the head
    with torch.no_grad():
        b.model.get_submodule(b.targets[0]).weight[0, 0] += 1e-3
    assert a.fingerprint() != b.fingerprint()


def test_head_is_drawn_from_the_seed(tiny_model):
    heads = [_load(tiny_model, num_labels=3, seed=s).head_state() for s in (0, 0, 1)]
    key = next(k for k in heads[0] if k.endswith("weight"))
    assert torch.equal(heads[0][key], heads[1][key]) and not torch.equal(heads[0][key], heads[2][key])


def test_missing_directory_and_unknown_packaged_model_are_user_errors(tmp_path):
    with pytest.raises(SupermaskError, match="directory .* not found"):
        _load(tmp_path / "nope" / "model")
    with pytest.raises(SupermaskError, match="unknown packaged model 'tiny'"):
        resolve_model_path("packaged:tiny")
    assert resolve_model_path("bert-base-uncased") == "bert-base-uncased"
