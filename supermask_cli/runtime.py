"""Where and how a model runs: device, autocast precision, and tokenized batches on the device."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from .data import Examples


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """Autocast dtype: ``auto`` is bf16 (or fp16) on CUDA and none (fp32) on CPU."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def encode_batch(tokenizer, examples: Examples, indices: np.ndarray, max_length: int, device: torch.device) -> dict:
    """Tokenize the examples at ``indices`` (one or two text fields), padded to the longest."""
    columns = [[col[i] for i in indices] for col in examples.texts]
    batch = tokenizer(*columns, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    batch["labels"] = torch.as_tensor(examples.labels[indices])
    return {k: v.to(device) for k, v in batch.items()}
