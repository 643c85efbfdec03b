"""A client's private secure-aggregation state, kept on its own machine, never under ``<run_dir>``.

``<dir>/round_RRR.json`` holds that round's two X25519 private keys, the self-mask seed, whether a
masked input was made with them, and which kind of share of which peer the client has revealed.
The directory is mode 0700 and every file 0600, written atomically (temporary file in the same
directory, fsync, rename, fsync of the directory); a file that others can read is refused.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from .. import storage
from ..errors import SecureAggregationError


class KeyStore:
    def __init__(self, directory: str | os.PathLike) -> None:
        self.dir = Path(directory).expanduser()

    def path(self, rnd: int) -> Path:
        return self.dir / f"round_{rnd:03d}.json"

    def check_outside(self, run_dir: str) -> None:
        """Refuse a secrets directory inside the (local) run directory."""
        if storage.local_dir_inside(self.dir, run_dir):
            raise SecureAggregationError(f"--secrets '{self.dir}' is inside run_dir '{run_dir}', which the aggregator can read")

    def read(self, rnd: int) -> dict[str, Any] | None:
        path = self.path(rnd)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            return None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecureAggregationError(f"'{path}': secure-aggregation secrets readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it")
        try:
            value = json.loads(path.read_bytes())
        except ValueError:
            raise SecureAggregationError(f"'{path}': not JSON") from None
        if not isinstance(value, dict):
            raise SecureAggregationError(f"'{path}': expected a JSON object")
        return value

    def write(self, rnd: int, value: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-", suffix=".part")  # mkstemp creates it 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(json.dumps(value, sort_keys=True).encode())
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path(rnd))
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
