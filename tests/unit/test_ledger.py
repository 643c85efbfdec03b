"""The ledger's composition: a history of different (σ, q) segments is the accountant's composition
of them (recomputed here with Opacus directly), and ``target_epsilon`` plans over the real history."""

from __future__ import annotations

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from supermask_cli.checkpoint import PrivacyRelease
from supermask_cli.config import config_from_dict
from supermask_cli.errors import SupermaskError
from supermask_cli.privacy import accountant, dpsgd, ledger


def _opacus(history: list[tuple[float, float, int]], delta: float = 1e-5, name: str = "rdp") -> float:
    acc = RDPAccountant() if name == "rdp" else PRVAccountant()
    acc.history = history  # one (noise multiplier, sample rate, steps) entry per segment
    return acc.get_epsilon(delta=delta)


def _cfg(privacy: dict, rounds: int = 2) -> object:
    return config_from_dict({"federation": {"num_clients": 3, "rounds": rounds}, "privacy": privacy}, "test")


@pytest.mark.parametrize("name", ["rdp", "prv"])
def test_compose_is_the_accountant_over_every_segment(name):
    # Prepare: batch 32 of 32 examples (q = 1) for 4 steps, then batch 4 (q = 0.125) for 4 steps
    history = [(1.0, 1.0, 4), (1.0, 0.125, 4)]
    # Execute
    composed = accountant.compose(name, history, 1e-5)
    # Assert: the two segments, not the latest (σ, q) applied to all 8 steps
    assert composed == pytest.approx(_opacus(history, name=name), rel=1e-9)
    assert composed != pytest.approx(_opacus([(1.0, 0.125, 8)], name=name), rel=1e-3)
    if name == "rdp":
        assert round(composed, 3) == 10.962


def test_compose_merges_equal_segments_and_knows_no_noise_means_no_bound():
    assert accountant.segments([(1.0, 0.5, 2), (2.0, 0.5, 1), (1.0, 0.5, 3), (3.0, 0.1, 0)]) == [(1.0, 0.5, 5), (2.0, 0.5, 1)]
    assert accountant.compose("rdp", [], 1e-5) == 0.0
    assert accountant.compose("rdp", [(1.0, 0.5, 2), (0.0, 0.5, 1)], 1e-5) is None


def test_a_client_file_composes_a_batch_size_change():
    cfg = _cfg({"mode": "example", "noise_multiplier": 1.0})
    known = [PrivacyRelease(round=0, noise_multiplier=1.0, sample_rate=1.0, steps=4)]
    record = ledger.client_file_record(cfg, None, 0, 1, dpsgd.ExamplePrivacy(1.0, 1.0, 0.125), 4, known=known)
    assert record.epsilon == pytest.approx(_opacus([(1.0, 1.0, 4), (1.0, 0.125, 4)]), rel=1e-12)
    assert record.round_epsilon == pytest.approx(_opacus([(1.0, 0.125, 4)]), rel=1e-12)
    assert record.steps == 8 and (record.noise_multiplier, record.sample_rate) == (1.0, 0.125)
    # the file's ε is recomputed from its releases, whatever its epsilon field says
    forged = record.model_copy(update={"epsilon": 0.1, "round_epsilon": 0.1})
    assert ledger.client_epsilon(cfg, forged, 1) == (record.epsilon, record.round_epsilon)


def test_an_earlier_round_of_which_nothing_is_known_is_counted():
    cfg = _cfg({"mode": "example", "noise_multiplier": 1.0}, rounds=3)
    record = ledger.client_file_record(cfg, None, 0, 2, dpsgd.ExamplePrivacy(1.0, 1.0, 0.25), 4, known=[])
    assert [r.round for r in record.history] == [0, 1, 2] and record.steps == 12


def test_target_epsilon_plans_over_the_real_schedule_when_the_batch_size_changes():
    cfg = _cfg({"mode": "example", "target_epsilon": 3.0})
    first = ledger.example_noise(cfg, 0, 1.0, 4)  # round 0 at q = 1, planned for 2 rounds × 4 steps
    assert _opacus([(first, 1.0, 8)]) <= 3.0
    known = [PrivacyRelease(round=0, noise_multiplier=first, sample_rate=1.0, steps=4)]
    # round 1 at the same q keeps round 0's plan
    assert ledger.example_noise(cfg, 0, 1.0, 4, rnd=1, known=known) == first
    # batch 4 (q = 0.125) with 4 steps: the old σ still fits, so it is kept
    assert ledger.example_noise(cfg, 0, 0.125, 4, rnd=1, known=known) == first
    # more steps than planned at a higher rate: a new σ, with the whole history within the target
    sigma = ledger.example_noise(cfg, 0, 1.0, 40, rnd=1, known=known)
    total = _opacus([(first, 1.0, 4), (sigma, 1.0, 40)])
    assert sigma > first and 2.99 <= total <= 3.0


def test_target_epsilon_refuses_when_the_history_already_spent_it():
    cfg = _cfg({"mode": "example", "target_epsilon": 3.0})
    known = [PrivacyRelease(round=0, noise_multiplier=0.5, sample_rate=1.0, steps=4)]
    with pytest.raises(SupermaskError, match="target_epsilon 3.0: client 0 cannot train round 1"):
        ledger.example_noise(cfg, 0, 0.125, 4, rnd=1, known=known)


# ------------------------------------------------------------------ the client's own ledger


def _entry(rnd: int, upload: bytes, run: str = "a" * 64):
    import hashlib

    from supermask_cli.privacy.local_ledger import LedgerEntry

    return LedgerEntry(run=run, round=rnd, parent="b" * 64, mode="example", noise_multiplier=1.0, sample_rate=0.25,
                       steps=4, accountant="rdp", upload=hashlib.sha256(upload).hexdigest(), numbers={"steps": 4})


def test_the_local_ledger_survives_a_new_process_and_keeps_each_upload(tmp_path):
    from supermask_cli.privacy.local_ledger import LocalLedger

    store = LocalLedger(tmp_path / "ledger", "c" * 64)
    assert store.releases() == []
    with store.locked():
        store.record(_entry(0, b"upload 0"), b"upload 0")
        store.record(_entry(1, b"upload 1"), b"upload 1")
    again = LocalLedger(tmp_path / "ledger", "c" * 64)  # what another process (or a restart) reads
    assert [e.round for e in again.releases()] == [0, 1]
    assert again.stored_upload(again.find("a" * 64, 1)) == b"upload 1"
    assert again.find("a" * 64, 2) is None and again.find("d" * 64, 0) is None
    assert not list((tmp_path / "ledger").glob("**/*.part"))  # written atomically, nothing left over
    for folder in (tmp_path / "ledger", store.upload_path("a" * 64, 0).parent):  # the client's alone
        assert folder.stat().st_mode & 0o777 == 0o700


def test_the_local_ledger_refuses_a_second_entry_an_altered_copy_or_a_corrupt_file(tmp_path):
    from supermask_cli.privacy.local_ledger import LocalLedger

    store = LocalLedger(tmp_path, "c" * 64)
    store.record(_entry(0, b"upload"), b"upload")
    with pytest.raises(SupermaskError, match="already holds round 0"):
        store.record(_entry(0, b"other"), b"other")
    store.upload_path("a" * 64, 0).write_bytes(b"tampered")
    assert store.stored_upload(store.find("a" * 64, 0)) is None
    store.file.write_text("{not json")
    with pytest.raises(SupermaskError, match="not a valid ledger file; refusing to release anything"):
        store.releases()


def test_the_local_ledger_is_refused_inside_the_run_dir(tmp_path):
    from supermask_cli.privacy.local_ledger import LocalLedger

    with pytest.raises(SupermaskError, match="inside run_dir"):
        LocalLedger(tmp_path / "run" / "ledger", "c" * 64).check_outside(str(tmp_path / "run"))
    LocalLedger(tmp_path / "ledger", "c" * 64).check_outside(str(tmp_path / "run"))
