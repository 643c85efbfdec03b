"""The privacy accountant, kept apart and swappable: Opacus' RDP (Mironov et al. 2019) or PRV
(Gopi et al. 2021) accountant for the (Poisson) subsampled Gaussian mechanism.

Every ε in a file is recomputed here from the recorded (noise multiplier, sample rate, steps,
delta): nothing about privacy is carried in one process's memory. A history whose (σ, q) changed
along the way (a client's batch size, hence q, may differ between rounds) is composed as Opacus
does: ``accountant.history`` holds one (σ, q, steps) entry per segment."""

from __future__ import annotations

import functools
import warnings

ACCOUNTANTS = ("rdp", "prv")

Segment = tuple[float, float, int]
"""(noise multiplier, sample rate, steps) of a run of identical subsampled Gaussian steps."""


def _accountant(name: str):
    from opacus.accountants import PRVAccountant, RDPAccountant

    if name not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {name!r}; known: {', '.join(ACCOUNTANTS)}")
    return RDPAccountant() if name == "rdp" else PRVAccountant()


def version() -> str:
    """The library behind the accountant, recorded with every ε."""
    import opacus

    return f"opacus {opacus.__version__}"


def segments(history: list[Segment]) -> list[Segment]:
    """``history`` with the steps of equal (σ, q) summed (composition does not depend on order), in
    order of first appearance, without empty segments."""
    merged: dict[tuple[float, float], int] = {}
    for sigma, rate, steps in history:
        if steps:
            merged[(sigma, rate)] = merged.get((sigma, rate), 0) + steps
    return [(sigma, rate, steps) for (sigma, rate), steps in merged.items()]


def compose(name: str, history: list[Segment], delta: float) -> float | None:
    """ε at ``delta`` of the composition of every segment of ``history``: 0 without any step, None
    (unbounded) if a segment has no noise."""
    return _compose(name, tuple(segments(history)), delta)


@functools.lru_cache(maxsize=1024)  # a pure function of its arguments, and RDP at q = 1 takes about a second
def _compose(name: str, history: tuple[Segment, ...], delta: float) -> float | None:
    if not history:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in history):
        return None
    acc = _accountant(name)
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RDP: "optimal order is the largest alpha" (a looser bound, still valid)
        return float(acc.get_epsilon(delta=delta))


def epsilon(name: str, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float | None:
    """ε at ``delta`` after ``steps`` compositions of the subsampled Gaussian mechanism with this noise
    multiplier (noise std / sensitivity) and sample rate; 0 before any step, None (unbounded)
    without noise."""
    return compose(name, [(noise_multiplier, sample_rate, steps)], delta)


def noise_multiplier(name: str, target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier (to 0.01 in ε) whose ε after ``steps`` is at most ``target_epsilon``."""
    from opacus.accountants.utils import get_noise_multiplier

    if steps == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps,
                accountant=name, epsilon_tolerance=0.01,
            )
        )


MAX_SIGMA = 1e6


def plan_noise(
    name: str, target_epsilon: float, delta: float, spent: list[Segment], sample_rate: float, steps: int
) -> float:
    """The smallest noise multiplier (to 0.01 in ε, by bisection as Opacus does) for ``steps`` more
    steps at ``sample_rate`` after the ``spent`` segments, with ε of the whole at most the target."""
    if not segments(spent):
        return noise_multiplier(name, target_epsilon, delta, sample_rate, steps)
    if steps == 0:
        return 0.0
    before = compose(name, spent, delta)
    if before is None or before >= target_epsilon:
        raise ValueError(f"ε {before} already spent; nothing is left of the target {target_epsilon}")

    def total(sigma: float) -> float:
        value = compose(name, [*spent, (sigma, sample_rate, steps)], delta)
        assert value is not None
        return value

    low, high = 0.0, 10.0
    eps_high = total(high)
    while eps_high > target_epsilon:
        low, high = high, 2 * high
        if high > MAX_SIGMA:
            raise ValueError(f"no noise multiplier up to {MAX_SIGMA:g} keeps ε within {target_epsilon}")
        eps_high = total(high)
    while target_epsilon - eps_high > 0.01:
        mid = (low + high) / 2
        eps = total(mid)
        if eps < target_epsilon:
            high, eps_high = mid, eps
        else:
            low = mid
    return high
