"""A run directory in an S3 bucket, end to end through s3fs, against moto's S3 server on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import yaml

from conftest import tiny_config_dict

pytest.importorskip("s3fs", reason="s3fs is not installed (pip install -e '.[test]')")
pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[test]')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on a free loopback port; yields the environment that points s3fs at it."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                assert proc.poll() is None, log.read_text()
                time.sleep(0.2)
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="runs")
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_run_dir_in_a_bucket(s3, tmp_path, tiny_model, tiny_data):
    from supermask_cli import steps, storage
    from supermask_cli.config import config_from_dict
    from supermask_cli.errors import SupermaskError
    from supermask_cli.layout import Layout

    raw = tiny_config_dict("s3://runs/tiny", tiny_model, tiny_data, "bernoulli")
    raw["federation"].update(num_clients=3, rounds=1, clients_per_round=2)
    cfg = config_from_dict(raw, "test")
    summaries = steps.run(cfg)
    layout = Layout(cfg.run_dir)
    assert layout.rounds() == [0, 1]
    chosen = steps.read_participants(layout.participants_path(0))
    assert chosen == steps.sampled(cfg, 0) and len(chosen) == 2
    assert sorted(c.client for c in summaries[0].clients) == chosen
    assert [p.rsplit("/", 1)[-1] for p in layout.client_files(0)] == [f"client_{c:03d}.safetensors" for c in chosen]
    first = storage.read_bytes(layout.global_path(1), 1 << 30)

    again = steps.run(cfg)  # a re-run on the bucket trains nothing
    assert all(not s.clients for s in again)
    assert storage.read_bytes(layout.global_path(1), 1 << 30) == first

    # never overwrite: the store's conditional PUT refuses an object that exists
    with pytest.raises(SupermaskError, match="already exists"):
        storage.write_atomic(layout.global_path(1), b"intruder")
    assert storage.read_bytes(layout.global_path(1), 1 << 30) == first

    # the same run on local disk writes byte-identical globals (the run dir never enters a file)
    local = config_from_dict({**raw, "run_dir": str(tmp_path / "local")}, "test")
    steps.run(local)
    assert (tmp_path / "local" / "round_001" / "global.safetensors").read_bytes() == first

    # export to a URL: a Hugging Face directory in the bucket, refused without --force
    info = steps.export(layout.global_path(1), "s3://runs/exported", cfg=cfg)
    assert "config.json" in storage.listdir(info["path"])
    with pytest.raises(SupermaskError, match="already exists"):
        steps.export(layout.global_path(1), "s3://runs/exported", cfg=cfg)


def test_cli_reads_and_writes_the_bucket(s3, tmp_path, tiny_model, tiny_data):
    raw = tiny_config_dict("s3://runs/cli", tiny_model, tiny_data, "threshold")
    raw["federation"].update(num_clients=2, rounds=1)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, **s3}
    cli = [sys.executable, "-m", "supermask_cli"]
    for args in (["init"], ["train-client", "--client", "0"], ["train-client", "--client", "1"], ["aggregate"]):
        proc = subprocess.run([*cli, *args, "-c", str(config)], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([*cli, "train-client", "--client", "0", "--round", "0", "-c", str(config)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "already exists" in proc.stderr
    proc = subprocess.run([*cli, "inspect", "s3://runs/cli/round_001/global.safetensors", "--json"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and '"round": 1' in proc.stdout
