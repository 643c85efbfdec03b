"""What a client's upload spends, and whether the client's own policy allows it (README "Privacy").

Without a policy, a client's earlier releases in the run come from its latest earlier client
file in the run directory. With one (``train-client --privacy-policy``), they come from its own
ledger (``privacy.local_ledger``) first, and before anything is trained: the run's ``privacy``
is checked against the policy, a round already released is answered with the same upload (or
refused if it was trained from another global), and a release that would take the client past
its budget is refused. The release is written to the ledger before the upload goes anywhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..checkpoint import ClientPrivacy, PrivacyRelease
from ..config import Config, config_digest
from ..data import Examples
from ..layout import Layout
from ..privacy import ledger
from ..privacy.dpsgd import ExamplePrivacy
from ..privacy.local_ledger import LedgerEntry, LocalLedger
from ..privacy.policy import ClientPolicy, PolicyRefusal, check_config, check_release
from .pool import examples_digest


@dataclass
class Release:
    cfg: Config
    client: int
    rnd: int
    parent: str  # the global's digest
    known: list[PrivacyRelease]  # this client's earlier releases in this run
    policy: ClientPolicy | None = None
    store: LocalLedger | None = None
    other_runs: list[tuple[float, float, int]] = field(default_factory=list)  # spent on this data by other runs
    replay: bytes | None = None  # the upload of this round, released before
    replayed: LedgerEntry | None = None

    @property
    def run(self) -> str:
        return config_digest(self.cfg)

    def example_settings(self, n: int, batch_size: int, steps: int) -> ExamplePrivacy | None:
        if self.cfg.privacy.mode != "example":
            return None
        return ledger.example_settings(self.cfg, self.client, n, batch_size, steps, self.rnd, self.known)

    def history(self, example: ExamplePrivacy | None, steps: int) -> list[PrivacyRelease]:
        """This client's releases in the run, this round's (σ, q, steps) last."""
        return ledger.run_history(self.cfg, self.client, self.known, ledger.this_release(self.cfg, self.rnd, example, steps))

    def check(self, example: ExamplePrivacy | None, steps: int) -> None:
        """The policy's checks of this round's release, before training."""
        if self.policy is None:
            return
        history = self.history(example, steps)
        spent = [*self.other_runs, *ledger.segments(history[:-1])]
        where = f"ledger {self.store}, {len(spent)} earlier release segment(s)"
        check_release(self.policy, spent, ledger.segments(history[-1:])[0], self.rnd, where)

    def file_record(self, example: ExamplePrivacy | None, steps: int) -> ClientPrivacy | None:
        """The ledger the client file carries (None without privacy)."""
        if self.cfg.privacy.mode == "none":
            return None
        return ledger.file_record(self.cfg, self.history(example, steps))

    def record(self, upload: bytes, privacy: ClientPrivacy | None, numbers: dict) -> None:
        """Enter the release in the client's ledger (before the upload is written anywhere else)."""
        if self.store is None:
            return
        assert privacy is not None and privacy.history[-1].round == self.rnd
        this = privacy.history[-1]
        self.store.record(LedgerEntry(
            run=self.run, round=self.rnd, parent=self.parent, mode=privacy.mode,
            noise_multiplier=this.noise_multiplier, sample_rate=this.sample_rate, steps=this.steps,
            accountant=self.policy.privacy.accountant if self.policy else privacy.accountant,
            upload=hashlib.sha256(upload).hexdigest(), numbers=numbers,
        ), upload)


def _from_ledger(entries: list[LedgerEntry]) -> list[PrivacyRelease]:
    return [PrivacyRelease(round=e.round, noise_multiplier=e.noise_multiplier, sample_rate=e.sample_rate, steps=e.steps)
            for e in entries]


@contextmanager
def open_release(
    cfg: Config, layout: Layout, client: int, rnd: int, parent: str, examples: Examples, policy: ClientPolicy | None
) -> Iterator[Release]:
    """The release of round ``rnd`` by ``client``; with a policy, its ledger is held until it ends."""
    if policy is None:
        known = ledger.previous_history(cfg, layout, client, rnd) if cfg.privacy.mode != "none" else []
        yield Release(cfg, client, rnd, parent, known)
        return
    check_config(policy, cfg)
    if policy.ledger is None:
        raise PolicyRefusal(f"{policy.source}: ledger: no ledger directory; this client keeps none, so it releases nothing")
    store = LocalLedger(policy.ledger, examples_digest(examples))
    store.check_outside(cfg.run_dir)
    with store.locked():
        entries = store.releases()
        run = config_digest(cfg)
        done = next((e for e in entries if e.run == run and e.round == rnd), None)
        if done is not None:
            yield _replay(policy, store, done, client, rnd, parent, cfg)
            return
        mine = {r.round: r for r in ledger.previous_history(cfg, layout, client, rnd)}
        mine.update({r.round: r for r in _from_ledger([e for e in entries if e.run == run])})
        others = [e.segment for e in entries if e.run != run]
        yield Release(cfg, client, rnd, parent, [mine[r] for r in sorted(mine)], policy, store, others)


def _replay(policy: ClientPolicy, store: LocalLedger, done: LedgerEntry, client: int, rnd: int, parent: str,
            cfg: Config) -> Release:
    if done.parent != parent:
        raise PolicyRefusal(
            f"{policy.source}: ledger: client {client} already released round {rnd} of this run, trained from global "
            f"{done.parent[:12]}; a second release from global {parent[:12]} is refused (ledger {store})"
        )
    data = store.stored_upload(done)
    if data is None:
        raise PolicyRefusal(
            f"{policy.source}: ledger: client {client} already released round {rnd} of this run and its stored copy "
            f"({store.upload_path(done.run, rnd)}) is gone or altered; a fresh release is refused (ledger {store})"
        )
    return Release(cfg, client, rnd, parent, [], policy, store, replay=data, replayed=done)
