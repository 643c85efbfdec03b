"""Config schema, YAML loading and ``--set`` overrides. Unknown keys are errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import SupermaskError

MaskKind = Literal["bernoulli", "threshold", "scaling"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str = "bert-base-uncased"
    revision: str | None = None
    max_length: int = Field(128, ge=8)
    head_modules: list[str] | None = None


class DataConfig(_Section):
    source: Literal["auto", "hub", "local"] = "auto"
    train_file: str | None = None
    eval_file: str | None = None
    client_train_file: str | None = None
    text_fields: list[str] | None = None
    label_field: str = "label"
    label_names: list[str] | None = None
    regression: bool = False
    max_train_examples: int | None = Field(None, ge=1)
    max_eval_examples: int | None = Field(None, ge=1)


class MaskConfig(_Section):
    kind: MaskKind = "bernoulli"
    target_modules: str | list[str] | None = None
    init_density: float = Field(0.99, gt=0.0, lt=1.0)
    threshold: float = 0.01
    init_score: float = 0.02
    eval: Literal["expected", "sample"] = "expected"
    encoding: Literal["auto", "none", "packed", "coded", "sparse"] = "auto"

    @model_validator(mode="after")
    def _check_threshold(self) -> MaskConfig:
        if self.init_score <= self.threshold:
            raise ValueError("mask.init_score must be above mask.threshold so the initial mask keeps every weight")
        return self


class FederationConfig(_Section):
    num_clients: int = Field(10, ge=1)
    clients_per_round: int | None = Field(None, ge=1)  # null: every client every round
    rounds: int = Field(10, ge=1)
    partition: Literal["iid", "dirichlet", "shards"] = "iid"
    dirichlet_alpha: float = Field(0.5, gt=0.0)
    shards_per_client: int = Field(2, ge=1)
    aggregator: Literal["mean", "median", "trimmed_mean", "capped", "filtered", "bayes"] = "mean"
    weighting: Literal["bounded", "examples", "uniform"] = "bounded"  # aggregate.example_weights
    trim_ratio: float = Field(0.1, ge=0.0, lt=0.5)
    max_client_share: float = Field(0.25, gt=0.0, le=1.0)
    filter_k: float = Field(3.0, gt=0.0)
    min_clients: int = Field(1, ge=1)
    max_client_examples: int = Field(10_000_000, ge=1)
    server_lr: float = Field(1.0, gt=0.0, le=10.0)
    server_head_lr: float | None = Field(None, gt=0.0, le=10.0)  # null: server_lr for the head too
    server_optimizer: Literal["sgd", "momentum", "adam", "yogi"] = "sgd"
    server_betas: tuple[float, float] = (0.9, 0.99)  # momentum uses the first
    server_tau: float = Field(1e-3, gt=0.0)  # adam/yogi: step = lr * m / (sqrt(v) + tau)
    bayes_prior: float = Field(1.0, ge=1.0)  # aggregator bayes: Beta(prior, prior) at every reset
    bayes_reset: int = Field(5, ge=1)  # aggregator bayes: restart from the prior every N rounds

    @model_validator(mode="after")
    def _check_betas(self) -> FederationConfig:
        if not all(0.0 <= b < 1.0 for b in self.server_betas):
            raise ValueError("federation.server_betas must both lie in [0, 1)")
        return self


class TrainConfig(_Section):
    batch_size: int = Field(32, ge=1)
    micro_batch_size: int | None = Field(None, ge=1)  # null: a batch in one pass; else length-sorted passes of this size
    max_steps: int | None = Field(None, ge=1)
    epochs: int = Field(1, ge=1)
    lr: float | None = Field(None, gt=0.0)
    head_lr: float = Field(1e-2, gt=0.0)  # 1e-3 left small-budget runs predicting one class (docs/BENCHMARKS.md)
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    schedule: Literal["linear", "constant"] = "constant"
    head_weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    dropout: bool | None = None  # null: train.use_dropout decides by mask kind
    compile: bool = False  # torch.compile the masked weights (fused sample/threshold, W * m, STE)
    logit_adjust: float = Field(0.0, ge=0.0)  # tau: train on logits + tau * log(client's label prior); 0 = off
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"


class EvalConfig(_Section):
    batch_size: int = Field(64, ge=1)


class PrivacyConfig(_Section):
    """Differential privacy (README "Privacy"): ``example`` is DP-SGD on each client's examples,
    ``client`` bounds and noises each client's whole contribution to the aggregate."""

    mode: Literal["none", "example", "client"] = "none"
    noise_multiplier: float | None = Field(None, ge=0.0)  # null: computed from target_epsilon
    target_epsilon: float | None = Field(None, gt=0.0)
    delta: float = Field(1e-5, gt=0.0, lt=1.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)  # example: per-example clipping; null = off
    accountant: Literal["rdp", "prv"] = "rdp"
    max_flips: int = Field(1024, ge=1)  # client: mask bits a client may change from the global
    client_clip: float = Field(1.0, gt=0.0)  # client: L2 bound on a client's float update

    @model_validator(mode="after")
    def _check_noise(self) -> PrivacyConfig:
        if self.mode == "none":
            return self
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError(f"privacy.mode {self.mode} needs exactly one of privacy.noise_multiplier and privacy.target_epsilon")
        noisy = self.target_epsilon is not None or bool(self.noise_multiplier)
        if self.mode == "example" and noisy and self.max_grad_norm is None:
            raise ValueError("privacy.max_grad_norm (per-example clipping) is required when noise is added")
        return self


class SecureAggregationConfig(_Section):
    """Secure aggregation (README "Secure aggregation"; DESIGN §9): the aggregator sees only sums."""

    enabled: bool = False
    threshold: int | None = Field(None, ge=2)  # t; null: secagg.sharing.default_threshold of the round's participants


SUM_RULES = ("mean", "bayes")
"""Aggregation rules that secure aggregation computes exactly: integer-weighted sums of the uploads
and the survivors' count (``capped`` shares are not integers; the others need every upload)."""


class Config(_Section):
    run_dir: str = "runs/default"
    seed: int = 0
    tensorboard: bool = False
    tracking: Literal["none", "mlflow"] = "none"
    tracking_uri: str | None = None  # mlflow: null = the local file store <run_dir>/mlruns
    model: ModelConfig = ModelConfig()
    task: str | None = None
    data: DataConfig = DataConfig()
    mask: MaskConfig = MaskConfig()
    federation: FederationConfig = FederationConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    secure_aggregation: SecureAggregationConfig = SecureAggregationConfig()

    @model_validator(mode="after")
    def _check_secure_aggregation(self) -> Config:
        if self.secure_aggregation.enabled and self.federation.aggregator not in SUM_RULES:
            raise ValueError(f"federation.aggregator {self.federation.aggregator!r} is not an integer-weighted sum, the only "
                             f"thing secure aggregation reveals: use {' or '.join(SUM_RULES)}")
        return self

    @model_validator(mode="after")
    def _check_privacy(self) -> Config:
        if self.privacy.mode == "client" and self.federation.aggregator != "mean":
            raise ValueError("privacy.mode client bounds each client's share of a plain sum: federation.aggregator must be mean")
        if self.privacy.mode == "example" and self.train.logit_adjust > 0:
            raise ValueError("train.logit_adjust reads the client's label counts, which DP-SGD's accounting does not "
                             "cover: set it to 0 with privacy.mode example")
        return self

    @model_validator(mode="after")
    def _check_bayes(self) -> Config:
        if self.federation.aggregator == "bayes" and self.mask.kind != "bernoulli":
            raise ValueError("federation.aggregator 'bayes' needs mask.kind 'bernoulli' (a Beta posterior over keep-probabilities)")
        return self


# Sections that every participant of a run must agree on; their digest is recorded in
# every checkpoint. Local choices (batch size, device, paths, learning rates) may differ.
# ``privacy`` and ``secure_aggregation`` enter the digest only when on, so that runs without them keep their digest.
CONTRACT_KEYS = ("seed", "model", "task", "mask", "federation", "privacy", "secure_aggregation")


def config_digest(cfg: Config) -> str:
    """SHA-256 over the run's contract: the sections all clients and the server must share."""
    dumped = cfg.model_dump(mode="json")
    contract = {key: dumped[key] for key in CONTRACT_KEYS}
    if cfg.privacy.mode == "none":
        del contract["privacy"]
    if not cfg.secure_aggregation.enabled:  # like privacy: runs without it keep their digest
        del contract["secure_aggregation"]
    if contract["federation"]["server_head_lr"] is None:  # added later: older runs keep their digest
        del contract["federation"]["server_head_lr"]
    contract["mask"] = {k: v for k, v in contract["mask"].items() if k not in ("eval", "encoding")}
    contract["labels"] = {k: dumped["data"][k] for k in ("text_fields", "label_field", "label_names", "regression")}
    blob = json.dumps(contract, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def _parse_value(text: str) -> Any:
    """Parse a ``--set`` value as YAML (numbers, booleans, null, lists) and keep strings as strings."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a raw config mapping (in place) and return it."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SupermaskError(f"--set {item!r}: expected key.sub=value")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SupermaskError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = _parse_value(value)
    return raw


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown config key '{key}'; see README's config reference for valid keys"
    return f"{source}: config key '{key}': {first['msg']}"


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load and validate a YAML config, apply ``--set`` overrides; errors name the file and key."""
    raw: dict[str, Any] = {}
    source = "--set overrides"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise SupermaskError(f"config file '{path}' not found; pass --config with an existing YAML file") from None
        except OSError as exc:
            raise SupermaskError(f"config file '{path}' could not be read: {exc.strerror}") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise SupermaskError(f"{path}: not valid YAML{where}") from None
        if not isinstance(raw, dict):
            raise SupermaskError(f"{path}: a config must be a YAML mapping of keys to values")
    apply_overrides(raw, overrides or [])
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise SupermaskError(_format_error(exc, source)) from None


def config_from_dict(raw: dict[str, Any], source: str) -> Config:
    """Validate a config mapping (e.g. from checkpoint metadata)."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise SupermaskError(_format_error(exc, source)) from None


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
