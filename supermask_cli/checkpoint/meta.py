"""The checkpoint file's metadata schema (validated strictly: no unknown fields) and its constants."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from .. import coding

FORMAT_NAME = "supermask"
FORMAT_VERSION = 1
META_KEY = "supermask"
MAX_FILE_BYTES = 8 * 1024**3
MAX_HEADER_BYTES = 8 * 1024**2
MAX_ENTRIES = 20_000
# Threshold uploads are coded against the global mask: a bit equal to the global one has
# probability 1 - flip_rate, where the client's measured flip rate is clamped into this range.
FLIP_RATE_RANGE = (1e-6, 0.5)

GROUPS = ("probs", "mask", "code", "scale", "head", "masked")
OPT_GROUPS = ("opt_m", "opt_v")
BAYES_GROUPS = ("beta_a", "beta_b")
STATE_GROUPS = OPT_GROUPS + BAYES_GROUPS
"""Server state carried from one aggregate to the next, keyed ``<group>/<global key>``."""
CODED_ENCODINGS = ("coded", "sparse")
"""Encodings stored as ``code/<module>``, decodable only with the global they were coded against."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class BaseModelMeta(_Strict):
    name: str
    revision: str | None
    fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")


class TargetMeta(_Strict):
    shape: list[int] = Field(min_length=2, max_length=2)
    out_features: int = Field(ge=1)


class ClientRecord(_Strict):
    """One accepted upload in a global. With ``privacy.mode: client`` the uploads are not noised,
    so only ``client`` and ``num_examples`` are published (README "What is published, per mode")."""

    client: int
    num_examples: int
    digest: str | None = None
    bytes: int | None = None
    mask_bits: int | None = None


class DroppedRecord(_Strict):
    file: str
    reason: str


class AggregationMeta(_Strict):
    rule: str
    clients: list[ClientRecord]
    dropped: list[DroppedRecord]
    missing: list[int] = Field(default_factory=list)  # sampled clients whose upload never arrived


class PoolMeta(_Strict):
    """The training pool every client's partition is cut from, recorded by ``init``."""

    source: Literal["hub", "local"]
    num_examples: int = Field(ge=0)
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")


class PrivacyRelease(_Strict):
    """One round's release by one client: its steps of the subsampled Gaussian mechanism."""

    round: int = Field(ge=0)
    noise_multiplier: float = Field(ge=0.0)
    sample_rate: float = Field(gt=0.0, le=1.0)
    steps: int = Field(ge=0)


class ClientPrivacy(_Strict):
    """A client file's privacy ledger (README "Privacy"): everything the accountant needs to
    recompute ``epsilon``; ``steps`` and ``epsilon`` are cumulative over the run for this client,
    composed over ``history`` (one release per round it took part in; ``noise_multiplier`` and
    ``sample_rate`` are this round's). Files written before ``history`` existed have an empty one:
    all their steps had this file's (σ, q)."""

    mode: Literal["example", "client"]
    noise_multiplier: float = Field(ge=0.0)
    max_grad_norm: float | None = Field(gt=0.0)  # client mode: the L2 bound on the float update
    max_flips: int | None = Field(ge=1)  # client mode: mask bits that may differ from the global
    sample_rate: float = Field(gt=0.0, le=1.0)
    steps: int = Field(ge=0)
    delta: float = Field(gt=0.0, lt=1.0)
    epsilon: float | None = Field(ge=0.0)  # null: unbounded (no noise)
    round_epsilon: float | None = Field(ge=0.0)  # this round's steps alone
    accountant: Literal["rdp", "prv", "pld"]
    accountant_version: str
    history: list[PrivacyRelease] = Field(default_factory=list)


class RunPrivacy(_Strict):
    """A global's privacy: ε of the run up to this global (the largest over clients) and of the
    round that made it."""

    mode: Literal["example", "client"]
    delta: float = Field(gt=0.0, lt=1.0)
    epsilon: float | None = Field(ge=0.0)
    round_epsilon: float | None = Field(ge=0.0)
    accountant: Literal["rdp", "prv", "pld"]
    accountant_version: str


class SecureUpload(_Strict):
    """A masked upload's record (secure aggregation, README): the integer weight its values are
    multiplied by, the round's total weight that sets k, k per upload tensor, and the peers whose
    pairwise masks it carries."""

    weight: int = Field(ge=1)
    total_weight: int = Field(ge=1)
    bits: dict[str, int]
    peers: list[int]


class FileMeta(_Strict):
    """Everything needed to check a file against its run, round, global and base model."""

    format: Literal["supermask"]
    format_version: int
    kind: Literal["bernoulli", "threshold", "scaling"]
    role: Literal["global", "client"]
    round: int = Field(ge=0)
    client: int | None = Field(default=None, ge=0)
    num_examples: int = Field(ge=0)
    base_model: BaseModelMeta
    targets: dict[str, TargetMeta] = Field(min_length=1)
    head: dict[str, list[int]]
    labels: list[str] | None
    config_digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    parent_digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    encoding: Literal["packed", "coded", "sparse", "none", "float", "masked"]
    coding_flip_rate: float | None = None
    mask_bits: int = Field(ge=0)
    aggregation: AggregationMeta | None = None
    pool: PoolMeta | None = None
    privacy: ClientPrivacy | RunPrivacy | None = None
    server_state: list[Literal["opt_m", "opt_v", "beta_a", "beta_b"]] = Field(default_factory=list)
    created_by: str
    secure_aggregation: SecureUpload | None = None  # masked uploads only

    @property
    def num_weights(self) -> int:
        """Number of masked weights (elements of every target weight)."""
        return sum(math.prod(t.shape) for t in self.targets.values())

    @property
    def bits_per_weight(self) -> float:
        """Mask payload bits divided by the number of masked weights."""
        return self.mask_bits / max(self.num_weights, 1)


class Checkpoint(BaseModel):
    """A checkpoint in memory: metadata plus decoded tensors.

    Decoded tensors: ``probs/*`` float32, ``mask/*`` bool (the weight's shape), ``scale/*`` and
    ``head/*`` float32. Tensors are never modified after loading (a global caches its sparse plans)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    meta: FileMeta
    tensors: dict[str, torch.Tensor]
    digest: str = ""
    path: str = ""
    size: int = 0
    _sparse_plans: dict[str, coding.SparsePlan] = PrivateAttr(default_factory=dict)

    def group(self, group: str) -> dict[str, torch.Tensor]:
        """The tensors of one group keyed by module or parameter name."""
        prefix = group + "/"
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def module_densities(self) -> dict[str, float]:
        """Density of each target module's mask (mean of probs for bernoulli globals; 1.0 for scaling)."""
        out: dict[str, float] = {}
        for name in self.meta.targets:
            if f"mask/{name}" in self.tensors:
                out[name] = float(self.tensors[f"mask/{name}"].float().mean())
            elif f"probs/{name}" in self.tensors:
                out[name] = float(self.tensors[f"probs/{name}"].mean())
            else:
                out[name] = 1.0
        return out

    def density(self) -> float:
        """Weighted density over every masked weight."""
        densities = self.module_densities()
        total = self.meta.num_weights
        return sum(densities[n] * math.prod(t.shape) for n, t in self.meta.targets.items()) / max(total, 1)


