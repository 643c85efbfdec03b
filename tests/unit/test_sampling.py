"""supermask_cli.sampling: who takes part in a round, a pure function of (seed, round)."""

from __future__ import annotations

import math

import pytest

from supermask_cli.sampling import participants


def test_everyone_when_not_sampling():
    assert participants(5, None, 0, 0) == [0, 1, 2, 3, 4]
    assert participants(5, 5, 0, 3) == [0, 1, 2, 3, 4]
    assert participants(5, 9, 0, 3) == [0, 1, 2, 3, 4]


def test_sample_is_sorted_distinct_and_of_the_asked_size():
    for rnd in range(20):
        chosen = participants(10, 3, 7, rnd)
        assert chosen == sorted(set(chosen)) and len(chosen) == 3 and all(0 <= c < 10 for c in chosen)


def test_sample_is_stable_and_depends_on_seed_and_round():
    assert participants(10, 3, 7, 2) == participants(10, 3, 7, 2)
    by_round = {tuple(participants(10, 3, 7, r)) for r in range(10)}
    by_seed = {tuple(participants(10, 3, s, 2)) for s in range(10)}
    assert len(by_round) > 3 and len(by_seed) > 3


def test_fixed_values_do_not_drift_across_versions():
    # SHA-256 ranks of "supermask-participants:{seed}:{round}:{client}": a change of the hashed text or
    # of the ordering would silently change every run's participants on every launcher
    assert [participants(6, 2, 1, r) for r in range(3)] == [[4, 5], [1, 4], [3, 4]]


def test_uniform_over_many_rounds():
    counts = [0] * 8
    rounds = 2000
    for r in range(rounds):
        for c in participants(8, 2, 0, r):
            counts[c] += 1
    expected = rounds * 2 / 8
    sd = math.sqrt(rounds * (2 / 8) * (6 / 8))
    assert all(abs(c - expected) < 5 * sd for c in counts)


def test_refuses_a_cohort_below_one():
    with pytest.raises(ValueError, match="at least 1"):
        participants(5, 0, 0, 0)
