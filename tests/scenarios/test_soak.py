"""The files soak (benchmarks/soak_files.py) in a CI-sized run: a sampled federation killed with
SIGKILL mid-round twice and resumed gives every global byte-identical to an undisturbed run,
and leaves no temporary file and no process behind. The full soak (1,000 clients, 100 rounds)
is in docs/BENCHMARKS.md, "Soak and restart"."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "soak_files.py"


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("soak_files", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_killed_and_resumed_sampled_run_matches_an_undisturbed_one(soak, tmp_path):
    # Prepare: 30 clients, 3 sampled per round, 5 rounds
    runs = {}
    for name, kills in (("undisturbed", []), ("disturbed", [1, 3])):
        config = soak.write_config(tmp_path, name, clients=30, per_round=3, rounds=5)

        # Execute
        runs[name] = soak.drive(config, tmp_path / name, kills, per_round=3)

    # Assert: both kills landed mid-round; every global is byte-identical; nothing left behind
    assert [k["round"] for k in runs["disturbed"]["kills"]] == [1, 3]
    assert all(0 < k["uploads_written"] <= 3 for k in runs["disturbed"]["kills"])
    assert soak.compare(tmp_path / "undisturbed", tmp_path / "disturbed", 5)["globals_differing"] == []
    assert not list((tmp_path / "disturbed").rglob(".tmp-*"))
    assert runs["disturbed"]["children_left"] == 0
    rounds = soak.summarize(runs["undisturbed"]["rounds"])
    assert rounds["rounds"] == 5 and rounds["peak_rss_mb_end"] > 0
