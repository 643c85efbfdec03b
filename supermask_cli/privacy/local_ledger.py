"""A client's own ledger of what it released from its data, kept on its machine, never under a
run directory (README "Privacy"). It survives processes and machines' restarts, and it is what
a client's policy counts its budget against.

``<dir>/<data digest>.json``: every release made from the examples with that digest
(``steps.pool.examples_digest``), one entry per (run, round): σ, q, steps, the accountant, the
global it was trained from and the SHA-256 of the upload, whose bytes are kept beside it
(``<dir>/<data digest>/<run>_round_RRR.safetensors``) so that a repeated request is answered
with the same file (a replay releases nothing new). Files are written atomically (upload first,
then the entry); ``<dir>/<data digest>.lock`` (an OS lock) serialises a check and the release
it allows, so that two processes cannot both spend the last of a budget.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import storage
from ..errors import SupermaskError

FORMAT = "supermask-ledger"
VERSION = 1
DIGEST = r"^[0-9a-f]{64}$"


class LedgerEntry(BaseModel):
    """One release: round ``round`` of the run with config digest ``run``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    run: str = Field(pattern=DIGEST)
    round: int = Field(ge=0)
    parent: str = Field(pattern=DIGEST)  # the global trained from
    mode: Literal["example", "client"]
    noise_multiplier: float = Field(ge=0.0)
    sample_rate: float = Field(gt=0.0, le=1.0)
    steps: int = Field(ge=0)
    accountant: str
    upload: str = Field(pattern=DIGEST)
    numbers: dict[str, float | int | str] = Field(default_factory=dict)  # local training statistics

    @property
    def segment(self) -> tuple[float, float, int]:
        return (self.noise_multiplier, self.sample_rate, self.steps)


class _LedgerFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    format: Literal["supermask-ledger"]
    version: int
    data: str = Field(pattern=DIGEST)
    releases: list[LedgerEntry]


class LocalLedger:
    def __init__(self, directory: str | os.PathLike, data_digest: str) -> None:
        self.dir = Path(directory).expanduser()
        self.data = data_digest
        self.file = self.dir / f"{data_digest}.json"

    def __str__(self) -> str:
        return str(self.file)

    def upload_path(self, run: str, rnd: int) -> Path:
        return self.dir / self.data / f"{run}_round_{rnd:03d}.safetensors"

    def check_outside(self, run_dir: str) -> None:
        """Refuse a ledger inside the (local) run directory, which the aggregator can read and rewrite."""
        if storage.local_dir_inside(self.dir, run_dir):
            raise SupermaskError(f"ledger '{self.dir}' is inside run_dir '{run_dir}'; keep it on the client's own storage")

    def _make_dirs(self) -> None:
        """The ledger's folders, readable by this user only: they hold the client's releases and uploads."""
        for folder in (self.dir, self.dir / self.data):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(folder, 0o700)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold this data's ledger for one check-and-release (blocks while another process holds it)."""
        self._make_dirs()
        with open(self.dir / f"{self.data}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def releases(self) -> list[LedgerEntry]:
        if not self.file.exists():
            return []
        try:
            parsed = _LedgerFile.model_validate(json.loads(self.file.read_bytes()))
        except (ValueError, ValidationError):
            raise SupermaskError(f"ledger '{self.file}' is not a valid ledger file; refusing to release anything") from None
        if parsed.version != VERSION or parsed.data != self.data:
            raise SupermaskError(f"ledger '{self.file}': version {parsed.version} for data {parsed.data[:12]}, "
                                 f"expected version {VERSION} for {self.data[:12]}")
        return parsed.releases

    def find(self, run: str, rnd: int) -> LedgerEntry | None:
        return next((e for e in self.releases() if e.run == run and e.round == rnd), None)

    def stored_upload(self, entry: LedgerEntry) -> bytes | None:
        """The upload of ``entry``, or None if its copy is gone or altered."""
        path = self.upload_path(entry.run, entry.round)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return data if hashlib.sha256(data).hexdigest() == entry.upload else None

    def record(self, entry: LedgerEntry, upload: bytes) -> None:
        """Add ``entry`` (its upload's bytes kept for replays); call under :meth:`locked`."""
        releases = self.releases()
        if any(e.run == entry.run and e.round == entry.round for e in releases):
            raise SupermaskError(f"ledger '{self.file}' already holds round {entry.round} of run {entry.run[:12]}")
        if hashlib.sha256(upload).hexdigest() != entry.upload:
            raise ValueError("entry.upload is not the upload's digest")
        self._make_dirs()
        storage.write_atomic(str(self.upload_path(entry.run, entry.round)), upload, force=True)
        body = _LedgerFile(format=FORMAT, version=VERSION, data=self.data, releases=[*releases, entry])
        storage.write_atomic(str(self.file), json.dumps(body.model_dump(mode="json"), indent=1).encode(), force=True)
