"""The GLUE task registry: text fields, label names, metrics and hub location of each task."""

from __future__ import annotations

from dataclasses import dataclass

from supermask_cli.errors import SupermaskError


@dataclass(frozen=True)
class TaskSpec:
    """How one task's examples look and how its predictions are scored."""

    name: str
    text_fields: tuple[str, ...]
    label_names: tuple[str, ...] | None  # None means regression
    metrics: tuple[str, ...]  # the first one is the task's main metric
    hub_path: str = "nyu-mll/glue"
    hub_config: str = ""
    train_split: str = "train"
    eval_split: str = "validation"

    @property
    def is_regression(self) -> bool:
        """True when the label is a real number rather than a class."""
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        """Width of the model's output: 1 for regression, else the number of classes."""
        return 1 if self.label_names is None else len(self.label_names)


def _glue(
    name: str,
    text_fields: tuple[str, ...],
    label_names: tuple[str, ...] | None,
    metrics: tuple[str, ...],
    eval_split: str = "validation",
) -> TaskSpec:
    return TaskSpec(
        name=name,
        text_fields=text_fields,
        label_names=label_names,
        metrics=metrics,
        hub_config=name,
        eval_split=eval_split,
    )


_PAIR = ("sentence1", "sentence2")
_ENTAIL = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _glue("cola", ("sentence",), ("unacceptable", "acceptable"), ("matthews_correlation",)),
        _glue("sst2", ("sentence",), ("negative", "positive"), ("accuracy",)),
        _glue("mrpc", _PAIR, ("not_equivalent", "equivalent"), ("f1", "accuracy")),
        _glue("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), ("f1", "accuracy")),
        _glue("stsb", _PAIR, None, ("pearson", "spearman")),
        _glue(
            "mnli",
            ("premise", "hypothesis"),
            ("entailment", "neutral", "contradiction"),
            ("accuracy",),
            eval_split="validation_matched",
        ),
        _glue("qnli", ("question", "sentence"), _ENTAIL, ("accuracy",)),
        _glue("rte", _PAIR, _ENTAIL, ("accuracy",)),
        _glue("wnli", _PAIR, ("not_entailment", "entailment"), ("accuracy",)),
    )
}


def get_task(name: str) -> TaskSpec:
    """The registered task called `name` (case-insensitive)."""
    spec = GLUE_TASKS.get(name.strip().lower())
    if spec is None:
        known = ", ".join(GLUE_TASKS)
        raise SupermaskError(f"unknown task '{name}' (task); use one of: {known}")
    return spec
