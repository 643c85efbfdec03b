"""Evaluation metrics as pure functions on numpy arrays; every result is a finite Python float."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

from supermask_cli.errors import SupermaskError


def _pair(preds: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten both arrays and check they describe the same examples."""
    p, y = np.asarray(preds).reshape(-1), np.asarray(labels).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"predictions ({p.size}) and labels ({y.size}) differ in length")
    return p, y


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of predictions equal to the label (0.0 on empty input)."""
    p, y = _pair(preds, labels)
    return float(np.mean(p == y)) if p.size else 0.0


def f1(preds: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 with class 1 as the positive class (0.0 when there is nothing to score)."""
    p, y = _pair(preds, labels)
    tp = float(np.sum((p == 1) & (y == 1)))
    errors = float(np.sum((p == 1) != (y == 1)))
    return 2 * tp / (2 * tp + errors) if tp else 0.0


def f1_macro(preds: np.ndarray, labels: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    p, y = _pair(preds, labels)
    classes = np.unique(np.concatenate([y, p]))
    scores = []
    for c in classes:
        tp = float(np.sum((p == c) & (y == c)))
        errors = float(np.sum((p == c) != (y == c)))
        scores.append(2 * tp / (2 * tp + errors) if tp else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def matthews_correlation(preds: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation coefficient (multi-class form, Gorodkin 2004); 0.0 when undefined."""
    p, y = _pair(preds, labels)
    classes, codes = np.unique(np.concatenate([y, p]), return_inverse=True)
    k = classes.size
    confusion = np.zeros((k, k), dtype=np.float64)
    np.add.at(confusion, (codes[: y.size], codes[y.size :]), 1.0)
    true_counts, pred_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    n, correct = confusion.sum(), np.trace(confusion)
    numerator = correct * n - pred_counts @ true_counts
    denominator = np.sqrt((n * n - pred_counts @ pred_counts) * (n * n - true_counts @ true_counts))
    return float(numerator / denominator) if denominator > 0 else 0.0


def _correlation(fn: Callable, preds: np.ndarray, labels: np.ndarray) -> float:
    """A scipy correlation, 0.0 where it is undefined (fewer than 2 points, constant input)."""
    p, y = _pair(preds, labels)
    p, y = p.astype(np.float64), y.astype(np.float64)
    if p.size < 2 or np.ptp(p) == 0 or np.ptp(y) == 0:
        return 0.0
    value = float(fn(p, y)[0])
    return value if np.isfinite(value) else 0.0


def pearson(preds: np.ndarray, labels: np.ndarray) -> float:
    """Pearson correlation; 0.0 when undefined."""
    return _correlation(stats.pearsonr, preds, labels)


def spearman(preds: np.ndarray, labels: np.ndarray) -> float:
    """Spearman rank correlation; 0.0 when undefined."""
    return _correlation(stats.spearmanr, preds, labels)


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "f1_macro": f1_macro,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearman": spearman,
}


def to_predictions(predictions: np.ndarray) -> np.ndarray:
    """Class ids from logits [n, k>1] by argmax; regression outputs [n] or [n, 1] flattened as-is."""
    out = np.asarray(predictions)
    if out.ndim == 2 and out.shape[1] > 1:
        return out.argmax(axis=1)
    return out.reshape(-1)


def compute_metrics(names: Sequence[str], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Score model outputs against labels with each named metric, in the order given."""
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise SupermaskError(f"unknown metric '{unknown[0]}'; use one of: {', '.join(METRICS)}")
    preds = to_predictions(predictions)
    return {name: METRICS[name](preds, labels) for name in names}
