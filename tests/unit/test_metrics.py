"""Metric functions against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from supermask_cli.errors import SupermaskError
from supermask_cli.metrics import (
    accuracy,
    compute_metrics,
    f1,
    matthews_correlation,
    pearson,
    spearman,
    to_predictions,
)


def test_accuracy() -> None:
    assert accuracy(np.array([1, 0, 1, 1]), np.array([1, 1, 1, 0])) == 0.5
    assert accuracy(np.array([]), np.array([])) == 0.0


def test_f1_binary_positive_class_one() -> None:
    # tp=2, fp=1, fn=1 -> precision 2/3, recall 2/3, f1 2/3
    preds = np.array([1, 1, 1, 0, 0])
    labels = np.array([1, 1, 0, 1, 0])
    assert f1(preds, labels) == pytest.approx(2 / 3)
    assert f1(np.zeros(4), np.zeros(4)) == 0.0


def test_mcc_binary_confusion_matrix() -> None:
    # tp=3 fn=1 fp=2 tn=4 -> (12 - 2) / sqrt(5*4*6*5) = 10 / sqrt(600)
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    preds = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0])
    assert matthews_correlation(preds, labels) == pytest.approx(10 / math.sqrt(600))
    assert matthews_correlation(labels, labels) == pytest.approx(1.0)
    assert matthews_correlation(1 - labels, labels) == pytest.approx(-1.0)


def test_mcc_multiclass_and_undefined() -> None:
    # confusion (rows true, cols pred): [[2,0,0],[0,1,1],[0,0,2]]; c=5, s=6, t=(2,2,2), p=(2,1,3)
    # (5*6 - (4+2+6)) / sqrt((36 - (4+1+9)) * (36 - 12)) = 18 / sqrt(22*24)
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 0, 1, 2, 2, 2])
    assert matthews_correlation(preds, labels) == pytest.approx(18 / math.sqrt(22 * 24))
    assert matthews_correlation(np.ones(5), np.array([0, 1, 0, 1, 1])) == 0.0


def test_pearson_spearman() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    # y = x^3 is monotone: spearman 1, pearson below 1
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert pearson(x, x**3) < 0.99
    assert spearman(x, -x) == pytest.approx(-1.0)


@pytest.mark.parametrize("fn", [pearson, spearman])
def test_correlation_undefined_is_zero(fn) -> None:
    assert fn(np.ones(4), np.array([1.0, 2.0, 3.0, 4.0])) == 0.0
    assert fn(np.array([1.0, 2.0]), np.array([3.0, 3.0])) == 0.0
    assert fn(np.array([1.0]), np.array([2.0])) == 0.0


def test_to_predictions() -> None:
    assert to_predictions(np.array([[0.1, 0.9], [2.0, -1.0]])).tolist() == [1, 0]
    assert to_predictions(np.array([[0.5], [1.5]])).tolist() == [0.5, 1.5]
    assert to_predictions(np.array([0.5, 1.5])).tolist() == [0.5, 1.5]


def test_compute_metrics_classification_and_regression() -> None:
    logits = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    out = compute_metrics(["f1", "accuracy"], logits, np.array([1, 0, 0, 1]))
    assert out == {"f1": pytest.approx(0.8), "accuracy": 0.75}
    assert list(out) == ["f1", "accuracy"]
    assert all(type(v) is float for v in out.values())
    reg = compute_metrics(["pearson", "spearman"], np.array([[1.0], [2.0], [3.0]]), np.array([2.0, 4.0, 6.0]))
    assert reg == {"pearson": pytest.approx(1.0), "spearman": pytest.approx(1.0)}
    assert all(type(v) is float for v in reg.values())


def test_compute_metrics_unknown_name() -> None:
    with pytest.raises(SupermaskError, match="unknown metric 'bleu'"):
        compute_metrics(["bleu"], np.zeros((2, 2)), np.zeros(2))


def test_f1_macro_averages_per_class_f1():
    from supermask_cli.metrics import f1_macro

    # class 0: tp 1, fp 0, fn 1 -> 2/3; class 1: tp 1, fp 1, fn 0 -> 2/3; class 2: tp 1 -> 1.0
    preds = np.array([0, 1, 1, 2])
    labels = np.array([0, 0, 1, 2])
    assert f1_macro(preds, labels) == pytest.approx((2 / 3 + 2 / 3 + 1.0) / 3)
