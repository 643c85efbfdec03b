"""supermask_cli.tasks: the GLUE registry (fields, labels, metrics, splits)."""

from __future__ import annotations

import pytest

from supermask_cli.errors import SupermaskError
from supermask_cli.metrics import METRICS
from supermask_cli.tasks import GLUE_TASKS, get_task


def test_every_glue_task_is_registered_with_known_metrics():
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    for spec in GLUE_TASKS.values():
        assert spec.metrics and all(m in METRICS for m in spec.metrics)
        assert spec.hub_path == "nyu-mll/glue" and spec.hub_config == spec.name


def test_label_order_is_glue_label_ids():
    # label id i of the hub dataset is label_names[i]: a swapped order silently inverts accuracy
    assert get_task("sst2").label_names == ("negative", "positive")
    assert get_task("rte").label_names == ("entailment", "not_entailment")
    assert get_task("wnli").label_names == ("not_entailment", "entailment")
    assert get_task("mnli").label_names == ("entailment", "neutral", "contradiction")


def test_regression_and_widths():
    stsb = get_task("stsb")
    assert stsb.is_regression and stsb.num_labels == 1 and stsb.metrics[0] == "pearson"
    assert not get_task("mnli").is_regression and get_task("mnli").num_labels == 3


def test_mnli_evaluates_on_matched_and_pairs_have_two_fields():
    assert get_task("mnli").eval_split == "validation_matched"
    assert get_task("sst2").eval_split == "validation"
    assert get_task("qqp").text_fields == ("question1", "question2")
    assert get_task("sst2").text_fields == ("sentence",)


def test_names_are_case_and_space_insensitive_and_unknown_ones_named():
    assert get_task(" SST2 ") is get_task("sst2")
    with pytest.raises(SupermaskError, match="unknown task 'imdb' \\(task\\); use one of: cola, sst2"):
        get_task("imdb")
