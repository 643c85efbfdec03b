"""supermask_cli.storage: atomic, non-clobbering writes and bounded reads, local and by URL."""

from __future__ import annotations

import os
import socket

import pytest

from supermask_cli import storage
from supermask_cli.errors import SupermaskError


def test_join_and_parent_keep_url_schemes():
    assert storage.join("s3://b/run/", "round_000", "x") == "s3://b/run/round_000/x"
    assert storage.join("/tmp/run", "a") == "/tmp/run/a"
    assert storage.parent("s3://b/run/x.json") == "s3://b/run"
    assert storage.parent("x.json") == ""


def test_write_atomic_refuses_to_overwrite_unless_forced(tmp_path):
    path = str(tmp_path / "sub" / "f.bin")
    storage.write_atomic(path, b"one")
    with pytest.raises(SupermaskError, match="already exists; pass --force"):
        storage.write_atomic(path, b"two")
    assert open(path, "rb").read() == b"one"
    storage.write_atomic(path, b"two", force=True)
    assert open(path, "rb").read() == b"two"
    assert os.listdir(tmp_path / "sub") == ["f.bin"]  # no temporary file left behind


def test_write_atomic_honours_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        storage.write_atomic(str(tmp_path / "private"), b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "private").stat().st_mode & 0o777 == 0o600


def test_read_bytes_refuses_files_over_the_limit(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"x" * 100)
    assert storage.read_bytes(str(path), 100) == b"x" * 100
    with pytest.raises(SupermaskError, match="over the 99-byte limit"):
        storage.read_bytes(str(path), 99, what="checkpoint")


def test_stale_temps_of_dead_writers_on_this_host_are_removed(tmp_path):
    host = socket.gethostname()
    dead = f".tmp-{host}-999999999-abc.part"
    live = f".tmp-{host}-{os.getpid()}-abc.part"
    other_host = ".tmp-elsewhere-999999999-abc.part"
    for name in (dead, live, other_host, "keep.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert storage.remove_stale_temps(str(tmp_path)) == [dead]
    assert sorted(os.listdir(tmp_path)) == sorted([live, other_host, "keep.txt"])


def test_listdir_and_exists(tmp_path):
    assert storage.listdir(str(tmp_path / "missing")) == []
    (tmp_path / "a").write_text("x")
    assert storage.listdir(str(tmp_path)) == ["a"]
    assert storage.exists(str(tmp_path / "a")) and not storage.exists(str(tmp_path / "b"))
