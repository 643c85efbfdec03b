"""Membership inference: per-example losses -> attack scores -> ROC, AUC, TPR at low FPR, and the
most any attack can reach under an (ε, δ)-DP guarantee.

Two attacks, both a threshold on one score per example (higher = "member"):

- ``loss``: the audited model's loss alone, score = -loss (Yeom et al. 2018). Members were fitted,
  so their loss is lower.
- ``calibrated``: score = loss under a reference model - loss under the audited model (Watson et
  al. 2022, "difficulty calibration"). Subtracting what the example costs a model that never
  trained on it removes most of the spread due to how easy the example is, so the threshold sees
  what training on it changed.

The reference a supermask model offers for free is its own frozen base, and we use the base
encoder *with the audited model's head* (every weight kept, no mask). Why not round 0's global
(the same encoder with the freshly initialised head): that head is random, so every example's
reference loss is about log(num_labels) and the calibrated score is the loss attack plus noise.
The audited head on the unmasked encoder is a linear probe of frozen pretrained features: it
knows how hard each example is, and its few parameters (the head is ~0.01% of what the mask
selects from) memorise little, so the difference isolates what the mask learned about an
example. Where the head itself memorises (tiny data, many epochs), the reference memorises too
and the calibrated attack is weaker than the loss attack: that is why both are reported and the
audit quotes the stronger one. A better reference (a model trained without the members) can be
given explicitly.

ROC and AUC come from scikit-learn. TPR at a target FPR is the highest TPR among ROC points whose
FPR is at most the target (the convention of Carlini et al. 2022); with fewer than 1/FPR
non-members that is the TPR at FPR 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

FPRS = (0.001, 0.01, 0.1)
ATTACKS = ("loss", "calibrated")


def fpr_key(fpr: float) -> str:
    """The JSON key of a target FPR: ``0.001``, ``0.01``, ``0.1``."""
    return f"{fpr:g}"


def per_example_losses(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of each row (float64, log-sum-exp stable), or squared error when ``logits``
    has one column (regression)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} do not pair up")
    if logits.shape[1] == 1:
        return (logits[:, 0] - labels.astype(np.float64)) ** 2
    top = logits.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return log_norm - logits[np.arange(len(labels)), labels.astype(np.int64)]


def loss_scores(losses: np.ndarray) -> np.ndarray:
    """The loss-threshold attack's scores: lower loss = more likely a member."""
    return -np.asarray(losses, dtype=np.float64)


def calibrated_scores(losses: np.ndarray, reference_losses: np.ndarray) -> np.ndarray:
    """The reference-calibrated attack's scores: how much lower the audited model's loss is than the
    reference model's on the same example."""
    losses, reference_losses = np.asarray(losses, np.float64), np.asarray(reference_losses, np.float64)
    if losses.shape != reference_losses.shape:
        raise ValueError(f"losses {losses.shape} and reference losses {reference_losses.shape} differ in shape")
    return reference_losses - losses


@dataclass
class AttackResult:
    """One attack's ROC over members (positives) and non-members (negatives)."""

    name: str
    auc: float
    tpr_at_fpr: dict[str, float]
    fpr: np.ndarray = field(repr=False)
    tpr: np.ndarray = field(repr=False)


def tpr_at(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Highest TPR on the ROC curve at an FPR of at most ``target``."""
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def attack(name: str, member_scores: np.ndarray, non_member_scores: np.ndarray, fprs=FPRS) -> AttackResult:
    """ROC, AUC and TPR at each FPR of scores where members should score higher."""
    members, non_members = np.asarray(member_scores, np.float64), np.asarray(non_member_scores, np.float64)
    if len(members) == 0 or len(non_members) == 0:
        raise ValueError("an attack needs at least one member and one non-member")
    if not (np.isfinite(members).all() and np.isfinite(non_members).all()):
        raise ValueError("attack scores must be finite")
    truth = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    scores = np.concatenate([members, non_members])
    fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)
    return AttackResult(
        name=name,
        auc=float(roc_auc_score(truth, scores)),
        tpr_at_fpr={fpr_key(f): tpr_at(fpr, tpr, f) for f in fprs},
        fpr=fpr,
        tpr=tpr,
    )


def null_auc_std(num_members: int, num_non_members: int) -> float:
    """Standard deviation of the AUC of an attack with no signal (scores of both sets drawn from one
    continuous distribution): the Mann-Whitney U statistic's, sqrt((m + n + 1) / (12 m n))."""
    m, n = num_members, num_non_members
    return math.sqrt((m + n + 1) / (12.0 * m * n))


# ------------------------------------------------------------------------------------ the DP bound


def dp_tpr_bound(fpr: float | np.ndarray, epsilon: float, delta: float) -> float | np.ndarray:
    """The most TPR any membership test reaches at this FPR against an (ε, δ)-DP mechanism.

    (ε, δ)-DP bounds both error trade-offs of the hypothesis test (Kairouz et al. 2015):
    TPR ≤ e^ε·FPR + δ and 1 - FPR ≤ e^ε·(1 - TPR) + δ, i.e.
    TPR ≤ min(1, e^ε·FPR + δ, 1 - e^-ε·(1 - δ - FPR)). The second term binds only above
    FPR = (1 - δ) / (1 + e^ε), where the bound has reached e^ε·(1 - δ)/(1 + e^ε) + δ already
    (0.73 at ε = 1, 0.9997 at ε = 8); below it the bound is min(1, e^ε·FPR + δ).
    """
    x = np.asarray(fpr, dtype=np.float64)
    if epsilon < 0 or not 0 <= delta <= 1 or (x < 0).any() or (x > 1).any():
        raise ValueError(f"need ε ≥ 0, 0 ≤ δ ≤ 1 and FPR in [0, 1] (got ε {epsilon}, δ {delta})")
    e = math.exp(min(epsilon, 700.0))
    bound = np.minimum.reduce([np.ones_like(x), e * x + delta, 1.0 - (1.0 - delta - x) / e])
    return float(bound) if np.ndim(fpr) == 0 else bound


def dp_auc_bound(epsilon: float, delta: float) -> float:
    """The largest AUC under (ε, δ)-DP: the area under :func:`dp_tpr_bound`, a piecewise linear curve
    through (0, δ), ((1 - δ)/(1 + e^ε), ·), (1 - δ, 1) and (1, 1); 0.5 at ε = δ = 0."""
    knees = np.array([0.0, (1.0 - delta) / (1.0 + math.exp(min(epsilon, 700.0))), 1.0 - delta, 1.0])
    heights = dp_tpr_bound(knees, epsilon, delta)
    return float(((heights[1:] + heights[:-1]) / 2 * np.diff(knees)).sum())


def bound_at_fprs(epsilon: float, delta: float, fprs=FPRS) -> dict[str, float]:
    """:func:`dp_tpr_bound` at each target FPR, keyed like ``tpr_at_fpr``."""
    return {fpr_key(f): dp_tpr_bound(f, epsilon, delta) for f in fprs}
