"""Target matching (PEFT style) and swapping ``MaskedLinear`` wrappers into a model."""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

from ..errors import SupermaskError
from .layer import MaskedLinear, is_conv1d

_BERT_LIKE = (
    r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
    r"|intermediate\.dense|output\.dense)|.*pooler\.dense"
)
# Default target modules per model family (``config.model_type``): every linear of the encoder
# or decoder blocks (attention and MLP) and the pooler, never the task head.
DEFAULT_TARGETS: dict[str, str] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "camembert": _BERT_LIKE,
    "distilbert": r".*transformer\.layer\.\d+\.(attention\.(q_lin|k_lin|v_lin|out_lin)|ffn\.(lin1|lin2))",
    "gpt2": r".*h\.\d+\.(attn\.(c_attn|c_proj)|mlp\.(c_fc|c_proj))",
}

# Default task-head modules per family: trained in float and averaged, never masked.
DEFAULT_HEADS: dict[str, list[str]] = {
    "distilbert": ["pre_classifier", "classifier"],
    "gpt2": ["score"],
}
_FALLBACK_HEADS = ["classifier", "pre_classifier", "score"]


def linear_names(model: nn.Module) -> list[str]:
    """Names of every linear-like module (``nn.Linear`` or ``Conv1D``) in ``model``."""
    return [n for n, m in model.named_modules() if n and (isinstance(m, nn.Linear) or is_conv1d(m))]


def head_modules(model: nn.Module, configured: list[str] | None) -> list[str]:
    """The task-head module names: configured, or the family default, present in ``model``."""
    names = dict(model.named_modules())
    if configured is not None:
        missing = [h for h in configured if h not in names]
        if missing:
            raise SupermaskError(f"model.head_modules: no module named {missing[0]!r} in the model")
        return list(configured)
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    candidates = DEFAULT_HEADS.get(model_type, _FALLBACK_HEADS)
    found = [h for h in candidates if h in names]
    if not found:
        raise SupermaskError(f"no task head found for model type {model_type!r}; set model.head_modules")
    return found


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def match_targets(
    names: list[str], patterns: str | list[str]
) -> tuple[list[str], dict[str, int]]:
    """Select target names: a string is a regex full-match; a list entry matches exactly or as a
    dotted suffix. Returns the matches (in model order) and the match count per pattern.
    Any pattern matching nothing is an error."""
    entries = [patterns] if isinstance(patterns, str) else list(patterns)
    if not entries:
        raise SupermaskError("mask.target_modules is an empty list; give at least one pattern")
    counts: dict[str, int] = {}
    selected: set[str] = set()
    for entry in entries:
        if isinstance(patterns, str):
            try:
                regex = re.compile(entry)
            except re.error as exc:
                raise SupermaskError(f"mask.target_modules: invalid regex {entry!r}: {exc}") from None
            hits = [n for n in names if regex.fullmatch(n)]
        else:
            hits = [n for n in names if n == entry or n.endswith("." + entry)]
        if not hits:
            raise SupermaskError(
                f"mask.target_modules: pattern {entry!r} matches no linear module of the model "
                f"(e.g. {names[0] if names else 'none'!r}); fix the pattern"
            )
        counts[entry] = len(hits)
        selected.update(hits)
    return [n for n in names if n in selected], counts


def resolve_targets(
    model: nn.Module, patterns: str | list[str] | None, heads: list[str]
) -> tuple[list[str], dict[str, int]]:
    """Target module names for ``model`` (family default when ``patterns`` is None), never a head."""
    if patterns is None:
        model_type = getattr(getattr(model, "config", None), "model_type", "")
        if model_type not in DEFAULT_TARGETS:
            raise SupermaskError(
                f"no default target modules for model type {model_type!r}; set mask.target_modules"
            )
        patterns = DEFAULT_TARGETS[model_type]
    candidates = [n for n in linear_names(model) if not _under(n, heads)]
    return match_targets(candidates, patterns)


def inject(model: nn.Module, targets: list[str], kind: str, tau: float = 0.0) -> dict[str, MaskedLinear]:
    """Replace each target module by a ``MaskedLinear`` wrapping it; returns them by name."""
    wrapped: dict[str, MaskedLinear] = {}
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = MaskedLinear(getattr(parent, child), kind, tau)
        setattr(parent, child, layer)
        wrapped[name] = layer
    return wrapped
