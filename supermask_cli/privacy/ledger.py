"""The privacy ledger: what each file records, recomputed from the config and earlier files.

A client file carries its ``history``: one release (σ, q, steps) per round this client took part
in, this round's last. The earlier releases come from what is known of them (this client's own
ledger, ``privacy.local_ledger``, or its latest earlier client file in the run directory); an
earlier round that sampled it (``sampling.participants``, a public function of seed and round) and
of which nothing is known is counted at this round's settings, so that no release is left out.
``epsilon`` is always the accountant's answer for the whole history: segments of different (σ, q)
(a batch size changed between rounds) are composed, never folded into the latest one.

Client sampling is public (anyone with the config can recompute who takes part), so it gives no
amplification: a round a client sits out costs it nothing, and a round it takes part in is
accounted at sample rate 1 (client mode) or at its own Poisson batch rate (example mode).
"""

from __future__ import annotations

from ..checkpoint import ClientPrivacy, FileMeta, PrivacyRelease, RunPrivacy, read_meta
from ..config import Config
from ..errors import CheckpointError, SupermaskError
from ..layout import Layout
from ..sampling import participants
from ..storage import exists
from . import accountant
from .dpsgd import ExamplePrivacy


def participated_rounds(cfg: Config, client: int, upto: int) -> list[int]:
    """The rounds 0..``upto`` that sample ``client``."""
    fed = cfg.federation
    return [r for r in range(upto + 1) if client in participants(fed.num_clients, fed.clients_per_round, cfg.seed, r)]


def participations(cfg: Config, client: int, upto: int) -> int:
    """How many of rounds 0..``upto`` sample ``client``."""
    return len(participated_rounds(cfg, client, upto))


def sample_rate(batch_size: int, n: int) -> float:
    """Poisson rate q = batch_size / n (at most 1)."""
    return min(1.0, batch_size / max(n, 1))


def segments(history: list[PrivacyRelease]) -> list[accountant.Segment]:
    return [(r.noise_multiplier, r.sample_rate, r.steps) for r in history]


def _earlier(known: list[PrivacyRelease], rnd: int) -> list[PrivacyRelease]:
    return sorted((r for r in known if r.round < rnd), key=lambda r: r.round)


def example_noise(
    cfg: Config, client: int, rate: float, steps_per_round: int, rnd: int = 0, known: list[PrivacyRelease] = ()
) -> float:
    """This client's noise multiplier for round ``rnd``: configured, or from ``privacy.target_epsilon``
    planned over the real schedule: the ``known`` releases of earlier rounds as they were, every
    other round it is scheduled for (and at least this one) at ``rate`` and ``steps_per_round``.
    The previous round's σ is kept while it still fits (the plan of round 0 fits every later round
    unless the batch size or the steps changed)."""
    p = cfg.privacy
    if p.noise_multiplier is not None:
        return p.noise_multiplier
    assert p.target_epsilon is not None
    before = _earlier(list(known), rnd)
    seen = {r.round for r in before}
    ahead = [r for r in participated_rounds(cfg, client, cfg.federation.rounds - 1) if r >= rnd or r not in seen]
    steps = steps_per_round * max(1, len(ahead))
    spent = segments(before)
    if before and before[-1].noise_multiplier > 0:
        last = before[-1].noise_multiplier
        planned = accountant.compose(p.accountant, [*spent, (last, rate, steps)], p.delta)
        if planned is not None and planned <= p.target_epsilon:
            return last
    try:
        return accountant.plan_noise(p.accountant, p.target_epsilon, p.delta, spent, rate, steps)
    except ValueError as exc:
        raise SupermaskError(
            f"privacy.target_epsilon {p.target_epsilon}: client {client} cannot train round {rnd}: {exc} "
            f"(its earlier releases: {len(before)})"
        ) from None


def client_noise(cfg: Config) -> float:
    """Client mode: the noise multiplier of every aggregation, configured or from the target ε of
    the client taking part in the most rounds."""
    p = cfg.privacy
    if p.noise_multiplier is not None:
        return p.noise_multiplier
    assert p.target_epsilon is not None
    most = max(participations(cfg, c, cfg.federation.rounds - 1) for c in range(cfg.federation.num_clients))
    return accountant.noise_multiplier(p.accountant, p.target_epsilon, p.delta, 1.0, most)


def example_settings(
    cfg: Config, client: int, n: int, batch_size: int, steps_per_round: int, rnd: int = 0,
    known: list[PrivacyRelease] = (),
) -> ExamplePrivacy:
    rate = sample_rate(batch_size, n)
    sigma = example_noise(cfg, client, rate, steps_per_round, rnd, known)
    return ExamplePrivacy(noise_multiplier=sigma, max_grad_norm=cfg.privacy.max_grad_norm, sample_rate=rate)


def file_history(privacy: ClientPrivacy, rnd: int, cfg: Config, client: int) -> list[PrivacyRelease]:
    """The releases a client file of round ``rnd`` accounts for. A file without ``history`` (written
    before it existed) stands for all its ``steps`` at its (σ, q), as of round ``rnd``; its earlier
    rounds are marked as known with no steps of their own."""
    if privacy.history:
        return list(privacy.history)
    sigma, rate = privacy.noise_multiplier, privacy.sample_rate
    covered = [PrivacyRelease(round=r, noise_multiplier=sigma, sample_rate=rate, steps=0)
               for r in participated_rounds(cfg, client, rnd - 1)]
    return [*covered, PrivacyRelease(round=rnd, noise_multiplier=sigma, sample_rate=rate, steps=privacy.steps)]


def previous_history(cfg: Config, layout: Layout, client: int, rnd: int) -> list[PrivacyRelease]:
    """The releases recorded in this client's latest file of an earlier round in the run directory."""
    for r in range(rnd - 1, -1, -1):
        path = layout.client_path(r, client)
        if exists(path):
            try:
                meta = read_meta(path)
            except CheckpointError:
                return []
            return file_history(meta.privacy, r, cfg, client) if isinstance(meta.privacy, ClientPrivacy) else []
    return []


def this_release(cfg: Config, rnd: int, example: ExamplePrivacy | None, steps: int) -> PrivacyRelease:
    """Round ``rnd``'s release: DP-SGD's (σ, q, steps), or one aggregation at rate 1 (client mode)."""
    if cfg.privacy.mode == "client":
        return PrivacyRelease(round=rnd, noise_multiplier=client_noise(cfg), sample_rate=1.0, steps=1)
    assert example is not None
    return PrivacyRelease(round=rnd, noise_multiplier=example.noise_multiplier, sample_rate=example.sample_rate,
                          steps=steps)


def run_history(cfg: Config, client: int, known: list[PrivacyRelease], release: PrivacyRelease) -> list[PrivacyRelease]:
    """This client's releases in the run through ``release``'s round: the ``known`` earlier ones,
    every other earlier round that sampled it at ``release``'s settings, then ``release``."""
    before = {r.round: r for r in _earlier(known, release.round)}
    for r in participated_rounds(cfg, client, release.round - 1):
        if r not in before:
            before[r] = release.model_copy(update={"round": r})
    return [*(before[r] for r in sorted(before)), release]


def file_record(cfg: Config, history: list[PrivacyRelease]) -> ClientPrivacy:
    """A client file's ledger for ``history`` (its last release is this round's)."""
    p = cfg.privacy
    assert p.mode != "none"
    release = history[-1]
    client_mode = p.mode == "client"
    return ClientPrivacy(
        mode=p.mode, noise_multiplier=release.noise_multiplier,
        max_grad_norm=p.client_clip if client_mode else p.max_grad_norm,
        max_flips=p.max_flips if client_mode else None, sample_rate=release.sample_rate,
        steps=sum(r.steps for r in history), delta=p.delta,
        epsilon=accountant.compose(p.accountant, segments(history), p.delta),
        round_epsilon=accountant.compose(p.accountant, segments([release]), p.delta),
        accountant=p.accountant, accountant_version=accountant.version(), history=history,
    )


def client_file_record(
    cfg: Config, layout: Layout, client: int, rnd: int, example: ExamplePrivacy | None, steps: int,
    known: list[PrivacyRelease] | None = None,
) -> ClientPrivacy | None:
    """The ledger a client file of round ``rnd`` carries (None without privacy); ``known``: the
    earlier releases (default: from this client's latest earlier file in the run directory)."""
    if cfg.privacy.mode == "none":
        return None
    if known is None:
        known = previous_history(cfg, layout, client, rnd)
    return file_record(cfg, run_history(cfg, client, known, this_release(cfg, rnd, example, steps)))


def client_epsilon(cfg: Config, privacy: ClientPrivacy, rnd: int) -> tuple[float | None, float | None]:
    """(ε of the run, ε of round ``rnd``) of a client file of round ``rnd``, recomputed by the run's
    accountant from the releases it records, never taken from its ``epsilon`` fields. A file
    without its round's release has an unknown (unbounded) round ε."""
    p = cfg.privacy
    if not privacy.history:  # an older file: only its totals are recorded
        total = accountant.epsilon(p.accountant, privacy.noise_multiplier, privacy.sample_rate, privacy.steps, p.delta)
        return total, privacy.round_epsilon
    this = [r for r in privacy.history if r.round == rnd]
    run_eps = accountant.compose(p.accountant, segments(privacy.history), p.delta)
    return run_eps, accountant.compose(p.accountant, segments(this), p.delta) if this else None


def _max(values: list[float | None]) -> float | None:
    """Largest ε, None (unbounded) if any is."""
    return None if any(v is None for v in values) else max(values, default=0.0)  # type: ignore[type-var]


def run_record(cfg: Config, rnd: int, previous: FileMeta, clients: list[FileMeta]) -> RunPrivacy | None:
    """The privacy of the global that round ``rnd`` makes from ``previous`` and these clients."""
    p = cfg.privacy
    if p.mode == "none":
        return None
    if p.mode == "client":
        z = client_noise(cfg)
        most = max(participations(cfg, c, rnd) for c in range(cfg.federation.num_clients))
        run_eps = accountant.epsilon(p.accountant, z, 1.0, most, p.delta)
        round_eps = accountant.epsilon(p.accountant, z, 1.0, 1, p.delta)
    else:
        # A client file without a ledger has an unknown (unbounded) ε.
        spent = [client_epsilon(cfg, m.privacy, rnd) if isinstance(m.privacy, ClientPrivacy)
                 else (None, None) for m in clients]
        before = previous.privacy.epsilon if isinstance(previous.privacy, RunPrivacy) else 0.0
        run_eps = _max([before, *(run for run, _ in spent)])
        round_eps = _max([this for _, this in spent])
    return RunPrivacy(
        mode=p.mode, delta=p.delta, epsilon=run_eps, round_epsilon=round_eps,
        accountant=p.accountant, accountant_version=accountant.version(),
    )


def metrics_fields(cfg: Config, meta: FileMeta) -> dict[str, float | None]:
    """``epsilon`` and ``round_epsilon`` for a global's metrics.json (0 before any training)."""
    if cfg.privacy.mode == "none":
        return {}
    if isinstance(meta.privacy, RunPrivacy):
        return {"epsilon": meta.privacy.epsilon, "round_epsilon": meta.privacy.round_epsilon}
    return {"epsilon": 0.0, "round_epsilon": 0.0}
