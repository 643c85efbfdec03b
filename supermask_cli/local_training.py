"""The client's local training loop: scores (or scaling vectors) and the head; base weights frozen."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .console import step_progress
from .data import Examples
from .errors import SupermaskError
from .mask.kinds import KINDS, kind_of
from .mask.layer import MaskedLinear
from .privacy.dpsgd import ExamplePrivacy, PrivateStep
from .runtime import autocast, autocast_dtype, encode_batch

# Learning rate of scores / scaling vectors per mask kind when ``train.lr`` is null. Adam moves a
# score by about lr per step, so the gap between the initial score and the threshold sets the pace.
DEFAULT_LR = {name: spec.default_lr for name, spec in KINDS.items()}


@dataclass(frozen=True)
class TrainSettings:
    batch_size: int
    max_steps: int | None
    epochs: int
    lr: float
    head_lr: float
    warmup_ratio: float
    schedule: str
    head_weight_decay: float
    max_grad_norm: float | None
    max_length: int
    seed: int
    dropout: bool = True
    compile: bool = False
    logit_adjust: float = 0.0
    micro_batch_size: int | None = None


@dataclass
class TrainResult:
    steps: int
    examples: int
    mean_loss: float
    final_loss: float
    seconds: float


def batch_order(n: int, batch_size: int, steps: int, generator: torch.Generator) -> list[np.ndarray]:
    """Index batches for ``steps`` steps: reshuffled passes over ``n`` examples, last partial batch kept."""
    batches: list[np.ndarray] = []
    while len(batches) < steps:
        perm = torch.randperm(n, generator=generator).numpy()
        batches.extend(perm[i : i + batch_size] for i in range(0, n, batch_size))
    return batches[:steps]


def micro_batches(indices: np.ndarray, lengths: np.ndarray, size: int | None) -> list[np.ndarray]:
    """A batch as passes of at most ``size`` examples (gradient accumulation), sorted by length so
    that each pass pads to its own longest example: the same summed gradient with fewer padded
    positions. ``size`` null or not below the batch: the batch as it is, in one pass."""
    if size is None or len(indices) <= size:
        return [indices]
    ordered = indices[np.argsort(lengths[indices], kind="stable")]
    return np.array_split(ordered, math.ceil(len(indices) / size))


def text_lengths(examples: Examples) -> np.ndarray:
    """Characters per example over its text fields: a tokenizer-free proxy for its token count."""
    return np.array([sum(len(column[i]) for column in examples.texts) for i in range(len(examples))], dtype=np.int64)


def planned_steps(n: int, batch_size: int, max_steps: int | None, epochs: int) -> int:
    """Steps of one client's round: ``max_steps``, else ``epochs`` passes of ``n`` examples."""
    return max_steps or epochs * math.ceil(n / batch_size)


def linear_schedule(total: int, warmup: int, decay: bool = True):
    """LR factor per step: linear warmup over ``warmup`` steps, then linear decay to 0 at ``total``
    (or, with ``decay=False``, constant)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        return max(0.0, (total - step) / max(total - warmup, 1)) if decay else 1.0

    return factor


def make_optimizer(cls: type[torch.optim.Optimizer], params: list[nn.Parameter], **kwargs) -> torch.optim.Optimizer:
    """``cls(params, fused=True, ...)`` where this torch has the fused kernel for these tensors (one
    pass per tensor instead of about seven: CUDA, and CPU since torch 2.4), else the default."""
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, ValueError, TypeError):
        return cls(params, **kwargs)


def clip_grad_norm_(params: list[nn.Parameter], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_``, bit for bit, without its multiply by exactly 1.0 (a full
    pass over every gradient) when the total norm is already within ``max_norm``."""
    utils = torch.nn.utils
    if not (hasattr(utils, "get_total_norm") and hasattr(utils, "clip_grads_with_norm_")):  # torch < 2.6
        utils.clip_grad_norm_(params, max_norm)
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    total = utils.get_total_norm(grads)
    if bool(max_norm / (total + 1e-6) >= 1.0):  # torch would scale by clamp(coef, max=1.0) == 1.0
        return
    utils.clip_grads_with_norm_(params, max_norm, total)


def use_dropout(setting: bool | None, kind: str) -> bool:
    """``train.dropout``; null keeps the model's dropout except for ``bernoulli``, whose sampled
    masks already drop weights at random (and dropout's sampling costs ~15% of its step)."""
    return setting if setting is not None else kind_of(kind).default_dropout


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability to 0 (attention implementations read ``dropout.p`` too)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def label_log_prior(labels: np.ndarray, num_labels: int) -> torch.Tensor:
    """log π_c of the client's labels, Laplace-smoothed ((count + 1) / (n + C)) so that a class the
    client never saw gets a finite offset."""
    counts = np.bincount(labels.astype(np.int64), minlength=num_labels)[:num_labels]
    return torch.log(torch.as_tensor((counts + 1) / (counts.sum() + num_labels), dtype=torch.float32))


def adjusted_loss(logits: torch.Tensor, labels: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Logit-adjusted cross-entropy (Menon et al. 2021): CE(logits + offset, y) with offset = τ log π.
    The logits then estimate the class-balanced posterior whatever the client's label skew, so
    clients with different priors train their heads towards the same target."""
    return nn.functional.cross_entropy(logits.float() + offset.to(logits.device), labels)


def loss_function(settings: TrainSettings, examples: Examples, model: nn.Module, device: torch.device):
    """``loss(model, batch)`` of a tokenized batch: the model's own (cross-entropy or MSE), or with
    ``train.logit_adjust`` > 0 the logit-adjusted cross-entropy against the client's prior."""
    if settings.logit_adjust <= 0:
        return lambda model, batch: model(**batch).loss
    if np.issubdtype(examples.labels.dtype, np.floating):
        raise SupermaskError("train.logit_adjust needs class labels; this task is a regression: set it to 0")
    offset = (settings.logit_adjust * label_log_prior(examples.labels, model.config.num_labels)).to(device)
    def loss(model: nn.Module, batch: dict) -> torch.Tensor:
        labels = batch.pop("labels")
        return adjusted_loss(model(**batch).logits, labels, offset)

    return loss


@dataclass
class TrainingState:
    """Everything a step needs, built once by :func:`setup` (torchtune's recipe set-up)."""

    model: nn.Module
    tokenizer: object
    examples: Examples
    settings: TrainSettings
    device: torch.device
    amp: torch.dtype | None
    groups: tuple[list[nn.Parameter], list[nn.Parameter]]  # mask params, head params
    optimizers: list[torch.optim.Optimizer]
    schedulers: list[torch.optim.lr_scheduler.LambdaLR]
    scaler: torch.amp.GradScaler
    loss_fn: object
    batches: list[np.ndarray]
    dp: PrivateStep | None
    lengths: np.ndarray | None  # characters per example, when batches run as micro-batches


def setup(
    model: nn.Module, layers: dict[str, MaskedLinear], head_params: list[nn.Parameter], tokenizer, examples: Examples,
    settings: TrainSettings, device: torch.device, precision: str, privacy: ExamplePrivacy | None = None,
) -> TrainingState:
    """Optimizers (Adam for scores, AdamW for the head) with linear warmup then linear decay or
    constant, loss scaling, the privacy engine, the loss, the batches, dropout and compile."""
    n = len(examples)
    loss_fn = loss_function(settings, examples, model, device)
    steps = planned_steps(n, settings.batch_size, settings.max_steps, settings.epochs)
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)  # bernoulli samples and dropout
    mask_params = [p for layer in layers.values() for p in layer.parameters() if p.requires_grad]
    optimizers = [
        make_optimizer(torch.optim.Adam, mask_params, lr=settings.lr),
        make_optimizer(torch.optim.AdamW, head_params, lr=settings.head_lr, weight_decay=settings.head_weight_decay),
    ]
    factor = linear_schedule(steps, int(settings.warmup_ratio * steps), decay=settings.schedule == "linear")
    schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, factor) for opt in optimizers]
    amp = autocast_dtype(device, precision)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    if privacy is not None and amp == torch.float16:
        raise SupermaskError("privacy.mode example: train.precision fp16 (loss scaling) is not supported; use fp32 or bf16")
    dp = PrivateStep(model, mask_params + head_params, privacy, n, device) if privacy is not None else None
    if dp is not None and dp.privacy.poisson:
        batches = dp.poisson_batches(steps)
    else:
        batches = batch_order(n, settings.batch_size, steps, generator)
    model.train()
    if not settings.dropout:
        disable_dropout(model)
    for layer in layers.values():
        layer.compiled = settings.compile  # read only by bernoulli and threshold layers
    lengths = text_lengths(examples) if settings.micro_batch_size is not None else None
    return TrainingState(model, tokenizer, examples, settings, device, amp, (mask_params, head_params), optimizers,
                         schedulers, scaler, loss_fn, batches, dp, lengths)


def step(state: TrainingState, indices: np.ndarray) -> float | None:
    """One optimizer step on the batch at ``indices``: forward, loss, backward (DP-SGD's with
    privacy) per micro-batch (``train.micro_batch_size``; each pass's loss weighted by its share of
    the batch, so the gradients add up to the batch mean's), clipping, both optimizers and
    schedulers. Returns the loss (None for an empty Poisson batch, whose gradient is noise alone)."""
    s = state
    loss = None
    if len(indices):
        loss = 0.0
        lengths = s.lengths if s.lengths is not None else np.zeros(0, dtype=np.int64)
        for part in micro_batches(indices, lengths, s.settings.micro_batch_size):
            batch = encode_batch(s.tokenizer, s.examples, part, s.settings.max_length, s.device)
            with autocast(s.device, s.amp):
                share = s.loss_fn(s.model, batch) * (len(part) / len(indices))
            if s.dp is not None:
                s.dp.accumulate(share, len(indices))
            else:
                s.scaler.scale(share).backward()
            loss += float(share.detach())
    if s.dp is not None:
        s.dp.finish(len(indices))
    if s.settings.max_grad_norm is not None:
        for opt, group in zip(s.optimizers, s.groups):
            s.scaler.unscale_(opt)
            clip_grad_norm_(group, s.settings.max_grad_norm)
    for opt, sched in zip(s.optimizers, s.schedulers):
        s.scaler.step(opt)
        sched.step()
        opt.zero_grad(set_to_none=True)
    s.scaler.update()
    if loss is None:
        return None
    if not math.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss}; lower train.lr or train.head_lr")
    return loss


def train_masks(
    model: nn.Module,
    layers: dict[str, MaskedLinear],
    head_params: list[nn.Parameter],
    tokenizer,
    examples: Examples,
    settings: TrainSettings,
    device: torch.device,
    precision: str,
    description: str,
    privacy: ExamplePrivacy | None = None,
) -> TrainResult:
    """Train mask scores (Adam) and the head (AdamW): :func:`setup`, then :func:`step` per batch
    under a progress bar. With ``privacy``, each step's gradient is the DP-SGD one (``privacy.dpsgd``)."""
    state = setup(model, layers, head_params, tokenizer, examples, settings, device, precision, privacy)
    losses: list[float] = []
    with step_progress(description, len(state.batches)) as bar:
        for indices in state.batches:
            value = step(state, indices)
            if value is None:
                bar.advance(0)
                continue
            losses.append(value)
            bar.advance(len(indices), value)
    model.eval()
    if state.dp is not None:
        state.dp.close()
    return TrainResult(
        steps=len(state.batches),
        examples=bar.examples,
        mean_loss=float(np.mean(losses)) if losses else math.nan,
        final_loss=losses[-1] if losses else math.nan,
        seconds=bar.elapsed,
    )
