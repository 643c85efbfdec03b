"""supermask_cli.layout: the one place that knows where a run's files live."""

from __future__ import annotations

from supermask_cli.layout import Layout


def test_paths_of_a_round(tmp_path):
    layout = Layout(str(tmp_path))
    assert layout.config == f"{tmp_path}/config.yaml"
    assert layout.metrics_log == f"{tmp_path}/metrics.jsonl"
    assert layout.global_path(3) == f"{tmp_path}/round_003/global.safetensors"
    assert layout.client_path(1, 7) == f"{tmp_path}/round_001/clients/client_007.safetensors"
    assert layout.participants_path(12) == f"{tmp_path}/round_012/participants.json"
    assert layout.metrics_path(1000) == f"{tmp_path}/round_1000/metrics.json"


def test_url_run_dirs_keep_their_scheme():
    layout = Layout("s3://bucket/runs/x/")
    assert layout.global_path(0) == "s3://bucket/runs/x/round_000/global.safetensors"


def test_metrics_beside_a_checkpoint_outside_the_rounds():
    assert Layout.metrics_beside("exports/g.safetensors") == "exports/metrics.json"
    assert Layout.metrics_beside("s3://b/k/g.safetensors") == "s3://b/k/metrics.json"
    assert Layout.metrics_beside("g.safetensors") == "metrics.json"


def test_rounds_are_those_with_a_global_file(tmp_path):
    layout = Layout(str(tmp_path))
    for rnd in (0, 2, 10):
        (tmp_path / f"round_{rnd:03d}").mkdir()
        (tmp_path / f"round_{rnd:03d}" / "global.safetensors").write_bytes(b"x")
    (tmp_path / "round_005").mkdir()  # no global: not a round yet
    (tmp_path / "round_7").mkdir()  # not the layout's name
    (tmp_path / "round_7" / "global.safetensors").write_bytes(b"x")
    assert layout.rounds() == [0, 2, 10]
    assert layout.latest_round() == 10
    assert Layout(str(tmp_path / "empty")).latest_round() is None


def test_uploads_map_client_ids_to_files_and_ignore_other_names(tmp_path):
    layout = Layout(str(tmp_path))
    clients = tmp_path / "round_000" / "clients"
    clients.mkdir(parents=True)
    for name in ("client_002.safetensors", "client_010.safetensors", "client_1.safetensors", ".tmp-h-1-x.part", "notes.txt"):
        (clients / name).write_bytes(b"x")
    assert layout.uploads(0) == {2: f"{clients}/client_002.safetensors", 10: f"{clients}/client_010.safetensors"}
    assert layout.client_files(0) == [f"{clients}/client_002.safetensors", f"{clients}/client_010.safetensors"]
