"""Soak and restart, short (benchmarks/soak_flower.py, 4 rounds): a SuperNode SIGKILLed and
restarted (planned in round 1) and the ServerApp SIGKILLed mid-round (planned in round 2; a kill
whose round ended between two polls moves to the next round) and the run restarted on its run_dir
give every global byte for byte as an undisturbed run, and leave no process and no temporary file.
Not in .ci/run: it takes 7-10 minutes of a 2-core machine.
Needs the Flower environment (scripts/flower_env.sh): skipped without it, unless
SUPERMASK_FLOWER_TESTS=1, where its absence is a failure."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from supermask_cli import checkpoint

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("SUPERMASK_FLOWER_VENV", REPO / ".venv-flower"))
ROUNDS = 4


@pytest.fixture
def flower_env():
    if (VENV / "bin" / "flwr").exists():
        return VENV
    if os.environ.get("SUPERMASK_FLOWER_TESTS") == "1":
        pytest.fail(f"SUPERMASK_FLOWER_TESTS=1 but no Flower environment at {VENV}; run scripts/flower_env.sh")
    pytest.skip(f"no Flower environment at {VENV} (scripts/flower_env.sh builds it)")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_killed_supernode_and_serverapp_give_the_undisturbed_globals(flower_env, tmp_path):
    # Execute: the undisturbed run, then the disturbed one, through the real local deployment
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "soak_flower.py"), "--rounds", str(ROUNDS), "--clients", "3",
         "--node-kill-every", "2", "--server-kill-rounds", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=1800, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout)

    # Assert: both disturbances happened, the ServerApp's kill cost a restart
    disturbed = out["disturbed"]
    events = [(e["round"], e["event"]) for e in disturbed["events"]]
    assert [e for r, e in events if e == "SuperNode 0 SIGKILLed and restarted" and r >= 1] != [], events
    assert [e for r, e in events if e == "ServerApp SIGKILLed" and r >= 2] != [], events
    assert disturbed["attempts"] >= 2 and out["undisturbed"]["attempts"] == 1
    kill = next(e for e in disturbed["events"] if e["event"] == "ServerApp SIGKILLed")
    assert 0 < kill["uploads_then"] <= 3  # mid-round: uploads written, the round's global not yet
    # every global, computed here from the files, byte for byte
    for rnd in range(ROUNDS + 1):
        name = f"round_{rnd:03d}/global.safetensors"
        assert _sha(tmp_path / "disturbed" / name) == _sha(tmp_path / "undisturbed" / name), rnd
    final = checkpoint.read_meta(str(tmp_path / "disturbed" / f"round_{ROUNDS:03d}" / "global.safetensors"))
    assert sorted(c.client for c in final.aggregation.clients) == [0, 1, 2]
    # nothing left behind: no process of either run, no temporary file, an empty TMPDIR
    for name in ("undisturbed", "disturbed"):
        left = out[name]["leftovers"]
        assert left == {"processes": [], "temp_files": [], "tmpdir_entries": []}, (name, left)
        assert not [p for p in (tmp_path / name).rglob("*") if p.name.startswith(".tmp-")]
    assert all(r["server_peak_rss_mib"] > 0 for r in disturbed["rounds"])
