"""Where a run's files live: ``<run_dir>/round_RRR/{global.safetensors, participants.json, clients/, metrics.json}``,
and with secure aggregation ``round_RRR/secagg/{keys,shares,unmask}/client_CCC.json`` and ``secagg/survivors.json``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import storage

_ROUND = re.compile(r"^round_(\d{3,})$")
CLIENT_FILE = re.compile(r"^client_(\d{3,})\.safetensors$")
REJECTED_REASON = re.compile(r"^client_(\d{3,})\.reason\.txt$")
SECAGG_FILE = re.compile(r"^client_(\d{3,})\.json$")


@dataclass(frozen=True)
class Layout:
    run_dir: str

    @property
    def config(self) -> str:
        return storage.join(self.run_dir, "config.yaml")

    @property
    def metrics_log(self) -> str:
        return storage.join(self.run_dir, "metrics.jsonl")

    def round_dir(self, rnd: int) -> str:
        return storage.join(self.run_dir, f"round_{rnd:03d}")

    def global_path(self, rnd: int) -> str:
        return storage.join(self.round_dir(rnd), "global.safetensors")

    def clients_dir(self, rnd: int) -> str:
        return storage.join(self.round_dir(rnd), "clients")

    def client_path(self, rnd: int, client: int) -> str:
        return storage.join(self.clients_dir(rnd), f"client_{client:03d}.safetensors")

    def rejected_dir(self, rnd: int) -> str:
        """Uploads refused before they entered ``clients/``: the file (when its size allowed) and a reason."""
        return storage.join(self.round_dir(rnd), "rejected")

    def rejected_path(self, rnd: int, client: int) -> str:
        return storage.join(self.rejected_dir(rnd), f"client_{client:03d}.safetensors")

    def rejected_reason_path(self, rnd: int, client: int) -> str:
        return storage.join(self.rejected_dir(rnd), f"client_{client:03d}.reason.txt")

    def rejected(self, rnd: int) -> dict[int, str]:
        """Client id -> reason file of the uploads refused in round ``rnd`` (``rejected/``)."""
        folder = self.rejected_dir(rnd)
        if not storage.exists(folder):
            return {}
        return {int(m.group(1)): storage.join(folder, name) for name in storage.listdir(folder)
                if (m := REJECTED_REASON.match(name))}

    def participants_path(self, rnd: int) -> str:
        return storage.join(self.round_dir(rnd), "participants.json")

    def metrics_path(self, rnd: int) -> str:
        return storage.join(self.round_dir(rnd), "metrics.json")

    @staticmethod
    def metrics_beside(checkpoint_path: str) -> str:
        """``metrics.json`` in the folder of a checkpoint outside the run's rounds."""
        folder = storage.parent(checkpoint_path)
        return storage.join(folder, "metrics.json") if folder else "metrics.json"

    # secure aggregation (DESIGN §9): the public messages of a round; nothing secret lives here
    def secagg_dir(self, rnd: int) -> str:
        return storage.join(self.round_dir(rnd), "secagg")

    def secagg_path(self, rnd: int, message: str, client: int) -> str:
        """``message`` keys | shares | unmask: one file per client."""
        return storage.join(self.secagg_dir(rnd), message, f"client_{client:03d}.json")

    def secagg_files(self, rnd: int, message: str) -> dict[int, str]:
        """Client id -> path of round ``rnd``'s ``message`` files."""
        folder = storage.join(self.secagg_dir(rnd), message)
        return {int(m.group(1)): storage.join(folder, name) for name in storage.listdir(folder) if (m := SECAGG_FILE.match(name))}

    def survivors_path(self, rnd: int) -> str:
        return storage.join(self.secagg_dir(rnd), "survivors.json")

    def rounds(self) -> list[int]:
        """Rounds that have a global file, ascending."""
        found = []
        for name in storage.listdir(self.run_dir):
            match = _ROUND.match(name)
            if match and storage.exists(self.global_path(int(match.group(1)))):
                found.append(int(match.group(1)))
        return sorted(found)

    def latest_round(self) -> int | None:
        rounds = self.rounds()
        return rounds[-1] if rounds else None

    def client_files(self, rnd: int) -> list[str]:
        """Client upload files of a round, sorted by name."""
        return [
            storage.join(self.clients_dir(rnd), name)
            for name in storage.listdir(self.clients_dir(rnd))
            if CLIENT_FILE.match(name)
        ]

    def uploads(self, rnd: int) -> dict[int, str]:
        """Client id -> upload path for the files in round ``rnd``'s clients folder."""
        out = {}
        for name in storage.listdir(self.clients_dir(rnd)):
            match = CLIENT_FILE.match(name)
            if match:
                out[int(match.group(1))] = storage.join(self.clients_dir(rnd), name)
        return out
