"""The privacy accountant, kept apart and swappable: Opacus' RDP (Mironov et al. 2019) or PRV
(Gopi et al. 2021) accountant for the (Poisson) subsampled Gaussian mechanism.

Every ε in a file is recomputed here from the recorded (noise multiplier, sample rate, steps,
delta): nothing about privacy is carried in one process's memory."""

from __future__ import annotations

import warnings

ACCOUNTANTS = ("rdp", "prv")


def _accountant(name: str):
    from opacus.accountants import PRVAccountant, RDPAccountant

    if name not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {name!r}; known: {', '.join(ACCOUNTANTS)}")
    return RDPAccountant() if name == "rdp" else PRVAccountant()


def version() -> str:
    """The library behind the accountant, recorded with every ε."""
    import opacus

    return f"opacus {opacus.__version__}"


def epsilon(name: str, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float | None:
    """ε at ``delta`` after ``steps`` compositions of the subsampled Gaussian mechanism with this noise
    multiplier (noise std / sensitivity) and sample rate; 0 before any step, None (unbounded)
    without noise."""
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return None
    acc = _accountant(name)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RDP: "optimal order is the largest alpha" (a looser bound, still valid)
        return float(acc.get_epsilon(delta=delta))


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
