"""A client's privacy policy: the weakest privacy it accepts and where its own ledger lives
(README "Privacy", DESIGN §9). A YAML file kept on the client's machine::

    privacy:
      mode: example              # example | client: the weakest mode accepted; none is always refused
      max_epsilon: 3.0           # the most ε this client's data may spend, over its whole ledger, at delta
      delta: 1.0e-5              # the largest δ a run may report, and the δ of max_epsilon
      min_noise_multiplier: null # the smallest σ accepted (give max_epsilon, this, or both)
      max_grad_norm: null        # example mode: the largest clipping bound C accepted (null: any)
      accountant: rdp            # rdp | prv: the accountant this client computes its budget with
    ledger: /var/lib/supermask/client-3   # relative: from the policy file's directory

The checks are pure functions of the policy, the run's config and the client's releases; each
refusal is a :class:`PolicyRefusal` (exit 2) naming the policy file, the key and the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import Config
from ..errors import SupermaskError
from . import accountant

STRENGTH = {"none": 0, "example": 1, "client": 2}
"""Client-level DP implies example-level DP at the same ε (one example is part of one client's data)."""


class PolicyRefusal(SupermaskError):
    """A request this client's policy does not allow; nothing was trained or recorded."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PolicyPrivacy(_Strict):
    mode: Literal["example", "client"]
    max_epsilon: float | None = Field(None, gt=0.0)
    delta: float = Field(1e-5, gt=0.0, lt=1.0)
    min_noise_multiplier: float | None = Field(None, gt=0.0)
    max_grad_norm: float | None = Field(None, gt=0.0)
    accountant: Literal["rdp", "prv"] = "rdp"

    @model_validator(mode="after")
    def _check_bound(self) -> PolicyPrivacy:
        if self.max_epsilon is None and self.min_noise_multiplier is None:
            raise ValueError("give privacy.max_epsilon, privacy.min_noise_multiplier or both")
        return self


class _PolicyFile(_Strict):
    privacy: PolicyPrivacy
    ledger: str | None = None


@dataclass(frozen=True)
class ClientPolicy:
    privacy: PolicyPrivacy
    ledger: Path | None  # None: the launcher's default (the Flower node's work dir)
    source: str  # the policy file, named in every refusal

    def with_default_ledger(self, directory: str | Path) -> ClientPolicy:
        return self if self.ledger is not None else ClientPolicy(self.privacy, Path(directory), self.source)


def load_policy(path: str | Path) -> ClientPolicy:
    """Read and validate a policy file; errors name the file and the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SupermaskError(f"privacy policy '{path}' not found") from None
    except OSError as exc:
        raise SupermaskError(f"privacy policy '{path}' could not be read: {exc.strerror}") from None
    except yaml.YAMLError:
        raise SupermaskError(f"{path}: not valid YAML") from None
    if not isinstance(raw, dict):
        raise SupermaskError(f"{path}: a privacy policy is a YAML mapping with a 'privacy' section and 'ledger'")
    try:
        parsed = _PolicyFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        if first["type"] == "extra_forbidden":
            raise SupermaskError(f"{path}: unknown policy key '{key}'") from None
        raise SupermaskError(f"{path}: policy key '{key}': {first['msg']}") from None
    ledger = None
    if parsed.ledger:
        ledger = Path(parsed.ledger).expanduser()
        ledger = ledger if ledger.is_absolute() else path.resolve().parent / ledger
    return ClientPolicy(parsed.privacy, ledger, str(path))


def load_policy_dir(directory: str | Path, num_clients: int) -> dict[int, ClientPolicy]:
    """``supermask run --privacy-policies DIR``: ``DIR/client-N.yaml`` for every client N."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SupermaskError(f"--privacy-policies '{directory}' is not a directory of client-N.yaml files")
    missing = [c for c in range(num_clients) if not (directory / f"client-{c}.yaml").is_file()]
    if missing:
        raise SupermaskError(
            f"--privacy-policies '{directory}': no policy for client(s) {missing} (expected client-N.yaml for N "
            f"in 0..{num_clients - 1})"
        )
    return {c: load_policy(directory / f"client-{c}.yaml") for c in range(num_clients)}


def check_config(policy: ClientPolicy, cfg: Config) -> None:
    """The run's ``privacy`` section against the policy, before any ε is computed."""
    want, run = policy.privacy, cfg.privacy
    src = policy.source
    if STRENGTH[run.mode] < STRENGTH[want.mode]:
        raise PolicyRefusal(
            f"{src}: privacy.mode: the run asks for '{run.mode}', this client accepts '{want.mode}' or stronger; "
            "refused before training"
        )
    if run.delta > want.delta:
        raise PolicyRefusal(
            f"{src}: privacy.delta: the run's δ {run.delta:g} is above this client's {want.delta:g}; refused before training"
        )
    if run.mode == "example" and want.max_grad_norm is not None:
        if run.max_grad_norm is None or run.max_grad_norm > want.max_grad_norm:
            raise PolicyRefusal(
                f"{src}: privacy.max_grad_norm: the run clips at {run.max_grad_norm}, this client accepts at most "
                f"{want.max_grad_norm}; refused before training"
            )


def check_release(
    policy: ClientPolicy, spent: list[accountant.Segment], release: accountant.Segment, rnd: int, where: str
) -> float | None:
    """Refuse a release of round ``rnd`` (σ, q, steps) whose σ is below the policy's or which would
    take ε over ``spent`` plus it above ``max_epsilon`` (policy δ and accountant). Returns that ε."""
    want, src = policy.privacy, policy.source
    sigma, rate, steps = release
    if sigma == 0:
        raise PolicyRefusal(
            f"{src}: privacy.mode: round {rnd}'s release would add no noise (σ 0, ε unbounded); refused before training"
        )
    if want.min_noise_multiplier is not None and sigma < want.min_noise_multiplier:
        raise PolicyRefusal(
            f"{src}: privacy.min_noise_multiplier: round {rnd}'s release has σ {sigma:.4g}, below this client's "
            f"{want.min_noise_multiplier:g}; refused before training"
        )
    after = accountant.compose(want.accountant, [*spent, release], want.delta)
    if want.max_epsilon is not None and (after is None or after > want.max_epsilon):
        before = accountant.compose(want.accountant, spent, want.delta)
        raise PolicyRefusal(
            f"{src}: privacy.max_epsilon {want.max_epsilon:g}: round {rnd}'s release (σ {sigma:.4g}, q {rate:.4g}, "
            f"{steps} steps) would take this client's ε to {_fmt(after)} at δ {want.delta:g} ({want.accountant}; "
            f"spent so far {_fmt(before)} in {where}); refused before training, the ledger unchanged"
        )
    return after


def _fmt(eps: float | None) -> str:
    return "unbounded" if eps is None else f"{eps:.3f}"
