"""Evaluation: loss and the task's metrics of a plain (baked) model on labelled examples."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .console import step_progress
from .data import Examples
from .metrics import compute_metrics
from .runtime import autocast, autocast_dtype, encode_batch


@torch.no_grad()
def predict(
    model: nn.Module,
    tokenizer,
    examples: Examples,
    *,
    batch_size: int,
    max_length: int,
    device: torch.device,
    precision: str,
    description: str = "eval",
) -> tuple[np.ndarray, float]:
    """Logits for every example and the mean loss (cross-entropy, or MSE for regression)."""
    model.eval()
    amp = autocast_dtype(device, precision)
    n = len(examples)
    outputs: list[np.ndarray] = []
    loss_sum = 0.0
    with step_progress(description, math.ceil(n / batch_size)) as bar:
        for start in range(0, n, batch_size):
            indices = np.arange(start, min(start + batch_size, n))
            batch = encode_batch(tokenizer, examples, indices, max_length, device)
            labels = batch.pop("labels")
            with autocast(device, amp):
                logits = model(**batch).logits.float()
            if logits.shape[-1] == 1:
                loss = F.mse_loss(logits.squeeze(-1), labels.float(), reduction="sum")
            else:
                loss = F.cross_entropy(logits, labels, reduction="sum")
            loss_sum += float(loss)
            outputs.append(logits.cpu().numpy())
            bar.advance(len(indices), float(loss) / len(indices))
    return np.concatenate(outputs), loss_sum / max(n, 1)


def evaluate_model(model: nn.Module, tokenizer, examples: Examples, metric_names: list[str], **kwargs) -> dict[str, float]:
    """``loss`` and each named metric on ``examples``."""
    logits, loss = predict(model, tokenizer, examples, **kwargs)
    predictions = logits.squeeze(-1) if logits.shape[-1] == 1 else logits
    return {"loss": loss, **compute_metrics(metric_names, predictions, examples.labels)}
