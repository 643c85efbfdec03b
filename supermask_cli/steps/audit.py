"""``audit``: membership inference against a global, or against one client's model (the global's
round + that client's upload, which an aggregator without secure aggregation reads in the clear).

Members and non-members are labelled examples: files in any format the data loader reads, a
client's share of the run's pool (``members_client``), or rows of the training file that the
pool's seeded sample left out, which no client trained on (``non_members_heldout``, drawn with
the members' label mix so that a skewed client's label prior is not mistaken for memorisation).
The attacks and the DP bound are in :mod:`supermask_cli.membership`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import checkpoint, data, membership
from ..checkpoint import Checkpoint, ClientPrivacy, RunPrivacy
from ..config import Config
from ..errors import CheckpointError, SupermaskError
from ..predict import predict
from ..mask.kinds import kind_of
from ..masked_model import bake_global, load_head
from ..model import BaseModel
from ..runtime import resolve_device
from .checks import check_base_matches, check_client, check_config, derive_seed, load_base
from .evaluation import EVAL_STREAM
from .pool import client_examples, examples_digest, is_regression, load_examples, resolved, text_fields

AUDIT_STREAM = -2  # derive_seed(seed, AUDIT_STREAM, ...): held-out draws and --max-examples samples


@dataclass
class AuditSet:
    examples: data.Examples
    source: str  # the file, or a sentence saying which rows of the pool


@dataclass
class AuditResult:
    checkpoint: str
    client_file: str | None
    round: int
    client: int | None
    reference: str
    members: AuditSet
    non_members: AuditSet
    attacks: dict[str, membership.AttackResult]
    mean_losses: dict[str, float]  # members / non_members under the audited model
    epsilon: float | None = None
    delta: float | None = None
    privacy_note: str | None = None

    @property
    def best(self) -> membership.AttackResult:
        """The stronger attack by AUC (ties: the loss attack): what the audit quotes."""
        return max(self.attacks.values(), key=lambda a: a.auc)

    def as_json(self) -> dict[str, Any]:
        m, n = len(self.members.examples), len(self.non_members.examples)
        out: dict[str, Any] = {
            "auc": self.best.auc,
            "tpr_at_fpr": self.best.tpr_at_fpr,
            "attack": self.best.name,
            "num_members": m,
            "num_non_members": n,
            "auc_null_std": membership.null_auc_std(m, n),
            "attacks": {a.name: {"auc": a.auc, "tpr_at_fpr": a.tpr_at_fpr} for a in self.attacks.values()},
            "mean_loss_members": self.mean_losses["members"],
            "mean_loss_non_members": self.mean_losses["non_members"],
            "checkpoint": self.checkpoint,
            "client_file": self.client_file,
            "round": self.round,
            "client": self.client,
            "reference": self.reference,
            "members": self.members.source,
            "non_members": self.non_members.source,
        }
        if self.epsilon is not None and self.delta is not None:
            out.update(
                epsilon=self.epsilon, delta=self.delta,
                bound_tpr_at_fpr=membership.bound_at_fprs(self.epsilon, self.delta),
                bound_auc=membership.dp_auc_bound(self.epsilon, self.delta),
            )
        if self.privacy_note:
            out["privacy_note"] = self.privacy_note
        return out


# --------------------------------------------------------------------------------------------- data


def file_examples(cfg: Config, path: str, labels: list[str] | None, option: str) -> AuditSet:
    """Labelled examples of a file (``option`` names the command-line option in errors)."""
    frame = data.read_table(path, key=option)
    if cfg.data.label_field not in frame.columns:
        raise SupermaskError(
            f"data file '{path}' ({option}) has no labels: no column '{cfg.data.label_field}' (data.label_field); "
            "membership is tested on labelled examples"
        )
    examples = data.examples_from_frame(
        frame, text_fields=text_fields(cfg), label_field=cfg.data.label_field, label_names=labels,
        regression=is_regression(cfg), source=path,
    )
    return AuditSet(examples, path)


def _keys(examples: data.Examples) -> list[tuple[str, ...]]:
    return list(zip(*examples.texts))


def heldout_examples(cfg: Config, gl: Checkpoint, k: int, like: data.Examples) -> AuditSet:
    """``k`` rows of the training file outside the run's pool (and whose text no pool row has),
    with ``like``'s label proportions (classification), seeded by the run's seed."""
    if cfg.data.client_train_file:
        raise SupermaskError(
            "--non-members-heldout needs a pooled run, but data.client_train_file is set (each client reads its "
            "own file); give --non-members FILE"
        )
    full = load_examples(cfg, "train", gl.meta.labels)
    chosen = data.sample_indices(len(full), cfg.data.max_train_examples, cfg.seed)
    pool = full.subset(chosen)
    recorded = gl.meta.pool
    if recorded is not None and (len(pool) != recorded.num_examples or examples_digest(pool) != recorded.digest):
        raise SupermaskError(
            f"{gl.path}: its training pool ({recorded.num_examples} examples) differs from the one this config "
            f"cuts ({len(pool)}); use the run's config.yaml and data"
        )
    seen = set(_keys(pool))
    outside = np.setdiff1d(np.arange(len(full)), chosen)
    keys = _keys(full)
    outside = np.array([i for i in outside if keys[i] not in seen], dtype=np.int64)
    where = f"rows of the training data outside the pool (data.max_train_examples={cfg.data.max_train_examples})"
    if len(outside) < k:
        raise SupermaskError(
            f"--non-members-heldout {k}: only {len(outside)} {where}; lower it or give --non-members FILE"
        )
    rng = np.random.default_rng(derive_seed(cfg.seed, AUDIT_STREAM, 0))
    if is_regression(cfg):
        picked = rng.choice(outside, size=k, replace=False)
    else:
        picked = _stratified(full.labels[outside], outside, like.labels, k, rng, where)
    return AuditSet(full.subset(np.sort(picked)), f"{k} held-out {where}, members' label mix")


def _stratified(labels: np.ndarray, rows: np.ndarray, like: np.ndarray, k: int, rng: np.random.Generator, where: str) -> np.ndarray:
    """``k`` of ``rows`` with the label proportions of ``like`` (largest-remainder rounding)."""
    classes, counts = np.unique(like, return_counts=True)
    exact = counts / counts.sum() * k
    want = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - want), kind="stable")[: k - int(want.sum())]:
        want[i] += 1
    picked = []
    for cls, n in zip(classes, want):
        candidates = rows[labels == cls]
        if len(candidates) < n:
            raise SupermaskError(
                f"--non-members-heldout {k}: the {where} hold {len(candidates)} of label {cls}, the members' mix "
                f"needs {n}; lower it or give --non-members FILE"
            )
        picked.append(rng.choice(candidates, size=n, replace=False))
    return np.concatenate(picked)


def check_disjoint(members: AuditSet, non_members: AuditSet) -> None:
    """Members and non-members must not share an example's text."""
    inside = set(_keys(members.examples))
    shared = [key for key in _keys(non_members.examples) if key in inside]
    if shared:
        raise SupermaskError(
            f"non-members '{non_members.source}' and members '{members.source}' share {len(set(shared))} example "
            f"text(s), e.g. {' | '.join(shared[0])[:80]!r}; the two sets must be disjoint"
        )


def capped(s: AuditSet, max_examples: int | None, seed: int, which: int) -> AuditSet:
    """At most ``max_examples`` rows of a set (seeded sample, original order)."""
    if max_examples is None or len(s.examples) <= max_examples:
        return s
    rows = data.sample_indices(len(s.examples), max_examples, derive_seed(seed, AUDIT_STREAM, which))
    return AuditSet(s.examples.subset(rows), f"{s.source} ({max_examples} of {len(s.examples)}, seeded)")


# ------------------------------------------------------------------------------------------- models


def bake_file(base: BaseModel, ckpt: Checkpoint, eval_mode: str, seed: int):
    """The plain model of a global (as ``eval`` bakes it) or of a client upload (its mask or scaling
    vectors and its head)."""
    if ckpt.meta.role == "global":
        return bake_global(base, ckpt, eval_mode, seed=seed)
    load_head(base.model, ckpt.group("head"))
    spec = kind_of(ckpt.meta.kind)
    for name in base.targets:
        spec.bake(base.model.get_submodule(name), ckpt.tensors[f"{spec.payload}/{name}"])
    base.model.eval()
    return base.model


def privacy_of(ckpt: Checkpoint) -> tuple[float | None, float | None, str | None]:
    """(ε, δ, note) that bound an attack on this file; ε None where the file has no guarantee."""
    p = ckpt.meta.privacy
    if p is None:
        return None, None, None
    if isinstance(p, ClientPrivacy) and p.mode == "client":
        return None, None, ("client-level DP adds its noise when aggregating: an upload read before aggregation "
                            "has no guarantee (the client file's ε is the aggregate's)")
    if p.epsilon is None:
        return None, None, f"privacy.mode {p.mode} without noise: ε is unbounded"
    assert isinstance(p, (ClientPrivacy, RunPrivacy))
    return p.epsilon, p.delta, None


def load_audited(cfg: Config, checkpoint_path: str, client_file: str | None) -> tuple[Checkpoint, Checkpoint, Config]:
    """(the global, the audited file, the resolved config), every file checked against the config."""
    gl = checkpoint.load_checkpoint(checkpoint_path)
    if gl.meta.role != "global":
        raise CheckpointError(
            f"{checkpoint_path}: is a client file; pass the global it trained from as --checkpoint and it as --client-file"
        )
    cfg = resolved(cfg, gl.meta.labels, gl.meta.pool)
    check_config(gl, cfg)
    if client_file is None:
        return gl, gl, cfg
    limit = checkpoint.max_client_bytes(gl.meta)
    if checkpoint.read_meta(client_file, max_bytes=limit).encoding == "masked":
        raise CheckpointError(
            f"{client_file}: is a masked upload (secure aggregation): no one can read this client's model from it, "
            "so there is nothing to audit; audit the global"
        )
    up = checkpoint.load_checkpoint(client_file, reference=gl, max_bytes=limit)
    check_client(up.meta, client_file, gl, cfg)
    return gl, up, cfg


def losses(model, tokenizer, examples: data.Examples, cfg: Config, device, description: str) -> np.ndarray:
    logits, _ = predict(
        model, tokenizer, examples, batch_size=cfg.eval.batch_size, max_length=cfg.model.max_length,
        device=device, precision=cfg.train.precision, description=description,
    )
    return membership.per_example_losses(logits, examples.labels)


def audit(
    cfg: Config,
    checkpoint_path: str,
    *,
    members: str | None = None,
    non_members: str | None = None,
    members_client: int | None = None,
    non_members_heldout: int | None = None,
    client_file: str | None = None,
    reference_path: str | None = None,
    max_examples: int | None = None,
) -> AuditResult:
    """Run both attacks on members against non-members; nothing is written."""
    if (members is None) == (members_client is None):
        raise SupermaskError("give exactly one of --members FILE and --members-client N")
    if (non_members is None) == (non_members_heldout is None):
        raise SupermaskError("give exactly one of --non-members FILE and --non-members-heldout K")
    gl, audited, cfg = load_audited(cfg, checkpoint_path, client_file)
    labels = gl.meta.labels
    if members is not None:
        mem = file_examples(cfg, members, labels, "--members")
    else:
        assert members_client is not None
        mem = AuditSet(client_examples(cfg, members_client, labels, gl.meta.pool), f"client {members_client}'s training rows")
    mem = capped(mem, max_examples, cfg.seed, 1)
    if non_members is not None:
        non = file_examples(cfg, non_members, labels, "--non-members")
    else:
        assert non_members_heldout is not None
        if non_members_heldout < 1:
            raise SupermaskError(f"--non-members-heldout {non_members_heldout}: give at least 1 row")
        non = heldout_examples(cfg, gl, non_members_heldout, mem.examples)
    non = capped(non, max_examples, cfg.seed, 2)
    check_disjoint(mem, non)

    device = resolve_device(cfg.train.device)
    seed = derive_seed(cfg.seed, audited.meta.round, EVAL_STREAM)
    base = load_base(cfg, labels)
    check_base_matches(base, gl)
    model = bake_file(base, audited, cfg.mask.eval, seed).to(device)
    target = {name: losses(model, base.tokenizer, s.examples, cfg, device, f"audit {name}")
              for name, s in (("members", mem), ("non_members", non))}
    del model, base
    ref_base = load_base(cfg, labels)
    if reference_path is None:
        load_head(ref_base.model, audited.group("head"))
        ref_model, reference = ref_base.model.eval(), "base model (no mask) with the audited head"
    else:
        ref = checkpoint.load_checkpoint(reference_path)
        if ref.meta.role != "global":
            raise CheckpointError(f"{reference_path}: a reference must be a global file")
        check_base_matches(ref_base, ref)
        ref_model, reference = bake_global(ref_base, ref, cfg.mask.eval, seed=seed), reference_path
    ref_model.to(device)
    ref_losses = {name: losses(ref_model, ref_base.tokenizer, s.examples, cfg, device, f"reference {name}")
                  for name, s in (("members", mem), ("non_members", non))}
    attacks = {
        "loss": membership.attack("loss", membership.loss_scores(target["members"]),
                                  membership.loss_scores(target["non_members"])),
        "calibrated": membership.attack(
            "calibrated", membership.calibrated_scores(target["members"], ref_losses["members"]),
            membership.calibrated_scores(target["non_members"], ref_losses["non_members"])),
    }
    epsilon, delta, note = privacy_of(audited)
    return AuditResult(
        checkpoint=checkpoint_path, client_file=client_file, round=audited.meta.round, client=audited.meta.client,
        reference=reference, members=mem, non_members=non, attacks=attacks,
        mean_losses={k: float(v.mean()) for k, v in target.items()},
        epsilon=epsilon, delta=delta, privacy_note=note,
    )
