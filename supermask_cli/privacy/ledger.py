"""The privacy ledger: what each file records, recomputed from the config and earlier files.

A client's ``steps`` count every DP step its data went through in this run, derived from the
rounds it takes part in (``sampling.participants``, a public function of seed and round) and,
when its earlier client files are at hand, from the last one's recorded steps (whichever is
larger, so training outside the schedule is still counted). ``epsilon`` is always the accountant's
answer for the recorded parameters.

Client sampling is public (anyone with the config can recompute who takes part), so it gives no
amplification: a round a client sits out costs it nothing, and a round it takes part in is
accounted at sample rate 1 (client mode) or at its own Poisson batch rate (example mode).
"""

from __future__ import annotations

from ..checkpoint import ClientPrivacy, FileMeta, RunPrivacy, read_meta
from ..config import Config
from ..errors import CheckpointError
from ..layout import Layout
from ..sampling import participants
from ..storage import exists
from . import accountant
from .dpsgd import ExamplePrivacy


def participations(cfg: Config, client: int, upto: int) -> int:
    """How many of rounds 0..``upto`` sample ``client``."""
    fed = cfg.federation
    return sum(client in participants(fed.num_clients, fed.clients_per_round, cfg.seed, r) for r in range(upto + 1))


def sample_rate(batch_size: int, n: int) -> float:
    """Poisson rate q = batch_size / n (at most 1)."""
    return min(1.0, batch_size / max(n, 1))


def example_noise(cfg: Config, client: int, rate: float, steps_per_round: int) -> float:
    """This client's noise multiplier for the whole run: configured, or the smallest that keeps its
    ε over every round it is scheduled for within ``privacy.target_epsilon``."""
    p = cfg.privacy
    if p.noise_multiplier is not None:
        return p.noise_multiplier
    assert p.target_epsilon is not None
    # at least this round's steps: a client trained outside the schedule still gets noise
    total = steps_per_round * max(1, participations(cfg, client, cfg.federation.rounds - 1))
    return accountant.noise_multiplier(p.accountant, p.target_epsilon, p.delta, rate, total)


def client_noise(cfg: Config) -> float:
    """Client mode: the noise multiplier of every aggregation, configured or from the target ε of
    the client taking part in the most rounds."""
    p = cfg.privacy
    if p.noise_multiplier is not None:
        return p.noise_multiplier
    assert p.target_epsilon is not None
    most = max(participations(cfg, c, cfg.federation.rounds - 1) for c in range(cfg.federation.num_clients))
    return accountant.noise_multiplier(p.accountant, p.target_epsilon, p.delta, 1.0, most)


def example_settings(cfg: Config, client: int, n: int, batch_size: int, steps_per_round: int) -> ExamplePrivacy:
    rate = sample_rate(batch_size, n)
    sigma = example_noise(cfg, client, rate, steps_per_round)
    return ExamplePrivacy(noise_multiplier=sigma, max_grad_norm=cfg.privacy.max_grad_norm, sample_rate=rate)


def previous_steps(layout: Layout, client: int, rnd: int) -> int | None:
    """``steps`` recorded in this client's latest file of an earlier round in the run directory."""
    for r in range(rnd - 1, -1, -1):
        path = layout.client_path(r, client)
        if exists(path):
            try:
                meta = read_meta(path)
            except CheckpointError:
                return None
            return meta.privacy.steps if isinstance(meta.privacy, ClientPrivacy) else None
    return None


def _record(cfg: Config, sigma: float, clip: float | None, flips: int | None, rate: float, steps: int, this_round: int) -> ClientPrivacy:
    p = cfg.privacy
    assert p.mode != "none"
    return ClientPrivacy(
        mode=p.mode, noise_multiplier=sigma, max_grad_norm=clip, max_flips=flips, sample_rate=rate, steps=steps,
        delta=p.delta, epsilon=accountant.epsilon(p.accountant, sigma, rate, steps, p.delta),
        round_epsilon=accountant.epsilon(p.accountant, sigma, rate, this_round, p.delta),
        accountant=p.accountant, accountant_version=accountant.version(),
    )


def example_record(
    cfg: Config, client: int, rnd: int, privacy: ExamplePrivacy, steps_this_round: int, previous: int | None
) -> ClientPrivacy:
    """A client file's ledger after training round ``rnd`` with DP-SGD."""
    scheduled = steps_this_round * participations(cfg, client, rnd)
    steps = max(scheduled, (previous or 0) + steps_this_round)
    return _record(cfg, privacy.noise_multiplier, privacy.max_grad_norm, None, privacy.sample_rate, steps, steps_this_round)


def client_record(cfg: Config, client: int, rnd: int, previous: int | None) -> ClientPrivacy:
    """Client mode: one step per aggregation the client takes part in (sample rate 1)."""
    steps = max(participations(cfg, client, rnd), (previous or 0) + 1)
    return _record(cfg, client_noise(cfg), cfg.privacy.client_clip, cfg.privacy.max_flips, 1.0, steps, 1)


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
        ledgers = [m.privacy if isinstance(m.privacy, ClientPrivacy) else None for m in clients]
        before = previous.privacy.epsilon if isinstance(previous.privacy, RunPrivacy) else 0.0
        run_eps = _max([before, *(c.epsilon if c else None for c in ledgers)])
        round_eps = _max([c.round_epsilon if c else None for c in ledgers])
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


def client_file_record(
    cfg: Config, layout: Layout, client: int, rnd: int, example: ExamplePrivacy | None, steps: int
) -> ClientPrivacy | None:
    """The ledger a client file of round ``rnd`` carries (None without privacy)."""
    if cfg.privacy.mode == "none":
        return None
    previous = previous_steps(layout, client, rnd)
    if cfg.privacy.mode == "client":
        return client_record(cfg, client, rnd, previous)
    assert example is not None
    return example_record(cfg, client, rnd, example, steps, previous)
