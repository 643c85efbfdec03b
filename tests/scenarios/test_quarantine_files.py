"""Uploads through files are quarantined, never wedge a round (issue 22 item 1): every file in
``round_R/clients/`` is checked before it counts; one that fails moves to ``round_R/rejected/``
with a one-line reason and into the new global's ``aggregation.dropped``; the round goes on
under ``min_clients``; a client may upload again while ``--wait`` lasts; a resumed ``run``
re-checks what it finds and trains the client again."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from supermask_cli import checkpoint, steps
from supermask_cli.cli import app
from supermask_cli.config import load_config
from supermask_cli.layout import Layout

from conftest import tiny_config_dict


class Clean:
    """An undisturbed 3-client, 2-round run (the reference), and its config."""

    def __init__(self, root: Path, tiny_model, tiny_data) -> None:
        self.root = root
        self.raw = tiny_config_dict(root / "clean", tiny_model, tiny_data, "threshold")
        self.config = self.write_config("clean.yaml", self.raw)
        steps.run(load_config(self.config, []))
        self.layout = Layout(self.raw["run_dir"])

    def write_config(self, name: str, raw: dict) -> Path:
        path = self.root / name
        path.write_text(yaml.safe_dump(raw))
        return path

    def copy(self, name: str, **federation) -> tuple[Path, Layout]:
        """The clean run dir copied up to round 1's uploads (round 2's global and metrics removed)."""
        run_dir = self.root / name
        shutil.copytree(self.raw["run_dir"], run_dir)
        shutil.rmtree(run_dir / "round_002")
        raw = {**self.raw, "run_dir": str(run_dir), "federation": {**self.raw["federation"], **federation}}
        return self.write_config(f"{name}.yaml", raw), Layout(str(run_dir))


@pytest.fixture(scope="module")
def clean(tmp_path_factory, tiny_model, tiny_data) -> Clean:
    return Clean(tmp_path_factory.mktemp("quarantine"), tiny_model, tiny_data)


def invoke(*args):
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "300"}
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def test_a_replayed_upload_is_quarantined_and_the_round_goes_on(clean):
    # Prepare: client 2's round-0 file replayed as its round-1 upload
    config, layout = clean.copy("replayed")
    replay = Path(clean.layout.client_path(0, 2)).read_bytes()
    Path(layout.client_path(1, 2)).write_bytes(replay)

    # Execute
    result = invoke("aggregate", "-c", config, "--round", "1")

    # Assert: the round aggregated clients 0 and 1; the replay sits in rejected/ with one line
    assert result.exit_code == 0, result.output
    meta = checkpoint.read_meta(layout.global_path(2))
    assert [c.client for c in meta.aggregation.clients] == [0, 1]
    assert not os.path.exists(layout.client_path(1, 2))
    assert Path(layout.rejected_path(1, 2)).read_bytes() == replay
    reason = Path(layout.rejected_reason_path(1, 2)).read_text()
    assert reason.count("\n") == 1 and "was coded against another global" in reason
    (dropped,) = meta.aggregation.dropped
    assert dropped.file == layout.rejected_path(1, 2) and dropped.reason == reason.strip()
    assert "dropped" in result.output and "another global" in result.output


def test_an_oversized_upload_is_refused_before_it_is_read(clean):
    config, layout = clean.copy("oversized")
    gl = steps.load_global(layout.global_path(1))
    limit = checkpoint.max_client_bytes(gl.meta)
    good = Path(layout.client_path(1, 2)).read_bytes()
    Path(layout.client_path(1, 2)).write_bytes(good + b" " * (limit + 1 - len(good)))

    result = invoke("aggregate", "-c", config, "--round", "1")

    assert result.exit_code == 0, result.output
    reason = Path(layout.rejected_reason_path(1, 2)).read_text()
    assert f"over the {limit}-byte limit" in reason
    assert not os.path.exists(layout.rejected_path(1, 2))  # too big to keep a copy of
    assert not os.path.exists(layout.client_path(1, 2))


def test_too_few_valid_uploads_fail_the_round_naming_the_rejected_file(clean):
    config, layout = clean.copy("too_few")
    for client in range(3):  # every upload replayed from round 0
        Path(layout.client_path(1, client)).write_bytes(Path(clean.layout.client_path(0, client)).read_bytes())

    result = invoke("aggregate", "-c", config, "--round", "1")

    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert "only 0 valid client file(s), federation.min_clients is 1" in line
    assert "first dropped: " + layout.client_path(1, 0) in line and "another global" in line
    assert "Traceback" not in result.output and not os.path.exists(layout.global_path(2))
    assert all(os.path.exists(layout.rejected_reason_path(1, c)) for c in range(3))  # a rerun trusts none of them


def test_a_client_rejected_during_the_wait_may_upload_again(clean):
    # Prepare: a bad upload now; the client's good one arrives once its rejection is visible
    config, layout = clean.copy("again")
    good = Path(layout.client_path(1, 2)).read_bytes()
    Path(layout.client_path(1, 2)).write_bytes(Path(clean.layout.client_path(0, 2)).read_bytes())

    def upload_again():
        deadline = time.monotonic() + 60
        while not os.path.exists(layout.rejected_reason_path(1, 2)) and time.monotonic() < deadline:
            time.sleep(0.05)
        tmp = layout.client_path(1, 2) + ".part"
        Path(tmp).write_bytes(good)
        os.replace(tmp, layout.client_path(1, 2))

    uploader = threading.Thread(target=upload_again)
    uploader.start()

    # Execute
    result = steps.aggregate(load_config(config, []), rnd=1, wait=60)
    uploader.join()

    # Assert: all three clients in, nothing dropped, and the global is the clean run's, byte for byte
    assert [c.client for c in result.clients] == [0, 1, 2] and result.dropped == []
    assert Path(layout.global_path(2)).read_bytes() == Path(clean.layout.global_path(2)).read_bytes()


def test_a_resumed_run_rechecks_a_left_file_and_trains_the_client_again(clean):
    # Prepare: an earlier run (or anyone with write access) left client 2's round-0 file as its round-1 upload
    config, layout = clean.copy("resumed")
    Path(layout.client_path(1, 2)).write_bytes(Path(clean.layout.client_path(0, 2)).read_bytes())
    rejected = []

    # Execute
    steps.run(load_config(config, []), on_rejected=lambda client, reason: rejected.append((client, reason)))

    # Assert: the file was moved out, client 2 trained again, the final global is the undisturbed one
    assert [c for c, _ in rejected] == [2] and "another global" in rejected[0][1]
    assert os.path.exists(layout.rejected_path(1, 2))
    assert Path(layout.global_path(2)).read_bytes() == Path(clean.layout.global_path(2)).read_bytes()
