"""Task registry, table reading, label mapping and client partitions."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import fsspec  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from supermask_cli.data import (  # noqa: E402
    Examples,
    client_indices,
    examples_from_frame,
    hub_available,
    infer_label_names,
    load_hub_split,
    partition,
    read_table,
    sample_indices,
)
from supermask_cli.errors import SupermaskError  # noqa: E402
from supermask_cli.metrics import METRICS  # noqa: E402
from supermask_cli.tasks import GLUE_TASKS, TaskSpec, get_task  # noqa: E402

SST2_VALIDATION = Path("/work/shared/data/sst2/validation.tsv")


# ------------------------------------------------------------------------------------------- tasks


def test_every_glue_task_is_coherent() -> None:
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    for name, spec in GLUE_TASKS.items():
        assert spec.name == name == spec.hub_config
        assert spec.hub_path == "nyu-mll/glue"
        assert 1 <= len(spec.text_fields) <= 2
        assert spec.metrics and all(m in METRICS for m in spec.metrics)
        assert spec.is_regression == (spec.label_names is None)
        assert spec.num_labels == (1 if spec.is_regression else len(spec.label_names))
        assert spec.eval_split == ("validation_matched" if name == "mnli" else "validation")


def test_task_details() -> None:
    assert get_task("SST2").label_names == ("negative", "positive")
    assert get_task("mnli").num_labels == 3
    assert get_task("stsb").is_regression and get_task("stsb").num_labels == 1
    assert get_task("qqp").text_fields == ("question1", "question2")
    assert get_task("mrpc").metrics[0] == "f1"
    assert get_task("cola").metrics == ("matthews_correlation",)
    with pytest.raises(SupermaskError, match=r"unknown task 'imdb' \(task\); use one of: cola, sst2"):
        get_task("imdb")


# ------------------------------------------------------------------------------------------- files


def test_tsv_with_bare_quote(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_text('sentence\tlabel\nhe said "hi\t1\n"quoted" NA text\t0\nnull\t1\n', encoding="utf-8")
    df = read_table(str(path))
    assert df["sentence"].tolist() == ['he said "hi', '"quoted" NA text', "null"]
    assert df["label"].tolist() == [1, 0, 1]


def test_csv_jsonl_parquet_round_trip(tmp_path: Path) -> None:
    frame = pd.DataFrame({"sentence1": ["a, b", 'say "x"', "c"], "sentence2": ["d", "e", "f"], "label": [0, 1, 1]})
    for name, write in [
        ("t.csv", lambda p: frame.to_csv(p, index=False)),
        ("t.jsonl", lambda p: frame.to_json(p, orient="records", lines=True)),
        ("t.json", lambda p: frame.to_json(p, orient="records", lines=True)),
        ("t.parquet", lambda p: frame.to_parquet(p)),
    ]:
        path = tmp_path / name
        write(path)
        back = read_table(str(path))
        assert back[["sentence1", "sentence2"]].astype(object).values.tolist() == frame[
            ["sentence1", "sentence2"]
        ].astype(object).values.tolist(), name
        assert back["label"].tolist() == [0, 1, 1], name


def test_memory_and_file_urls(tmp_path: Path) -> None:
    fsspec.filesystem("memory").pipe("/supermask-test/train.tsv", b'sentence\tlabel\nx "y\t0\n')
    assert read_table("memory://supermask-test/train.tsv")["sentence"].tolist() == ['x "y']
    (tmp_path / "a.csv").write_text("sentence,label\nz,1\n")
    assert read_table(f"file://{tmp_path}/a.csv")["label"].tolist() == [1]


def test_read_table_errors(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.tsv")
    with pytest.raises(SupermaskError, match=r"^data file '.*nope.tsv' not found \(data.train_file\); check the path$"):
        read_table(missing, key="data.train_file")
    with pytest.raises(SupermaskError, match=r"unsupported extension; use one of: .tsv, .csv, .jsonl, .json, .parquet"):
        read_table(str(tmp_path / "x.xlsx"))
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(SupermaskError, match=r"could not be read as Parquet"):
        read_table(str(bad))


# ------------------------------------------------------------------------------------------ labels


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"sentence": ["good", "bad", 7], "label": ["positive", "negative", "positive"]})


def test_string_labels_map_by_position() -> None:
    ex = examples_from_frame(
        _frame(),
        text_fields=["sentence"],
        label_field="label",
        label_names=["negative", "positive"],
        regression=False,
        source="t.csv",
    )
    assert ex.texts == [["good", "bad", "7"]]
    assert ex.labels.dtype == np.int64 and ex.labels.tolist() == [1, 0, 1]
    assert len(ex) == 3


def test_int_labels_and_pairs() -> None:
    df = pd.DataFrame({"q": ["a", "b"], "s": ["c", None], "label": [1, 0]})
    ex = examples_from_frame(
        df, text_fields=["q", "s"], label_field="label", label_names=["e", "n"], regression=False, source="t"
    )
    assert ex.texts == [["a", "b"], ["c", ""]] and ex.labels.tolist() == [1, 0]
    with pytest.raises(SupermaskError, match=r"label 2 in column 'label', outside 0..1"):
        examples_from_frame(
            df.assign(label=[2, 0]), text_fields=["q"], label_field="label", label_names=["e", "n"],
            regression=False, source="t",
        )


def test_unknown_string_label() -> None:
    with pytest.raises(SupermaskError, match=r"^data file 't.csv' has unknown label 'positive' in column 'label'"):
        examples_from_frame(
            _frame(), text_fields=["sentence"], label_field="label", label_names=["neg", "pos"],
            regression=False, source="t.csv",
        )


def test_missing_column_error_text() -> None:
    with pytest.raises(SupermaskError) as err:
        examples_from_frame(
            _frame(), text_fields=["text"], label_field="label", label_names=None, regression=False, source="t.csv"
        )
    assert str(err.value) == (
        "data file 't.csv' has no column 'text' (data.text_fields); columns present: sentence, label"
    )
    with pytest.raises(SupermaskError, match=r"no column 'y' \(data.label_field\)"):
        examples_from_frame(
            _frame(), text_fields=["sentence"], label_field="y", label_names=None, regression=False, source="t"
        )


def test_unlabelled_file_is_an_error() -> None:
    df = pd.DataFrame({"sentence": ["a", "b"], "label": [-1, -1]})
    with pytest.raises(SupermaskError, match=r"^data file 'test.tsv' has no labels"):
        examples_from_frame(
            df, text_fields=["sentence"], label_field="label", label_names=["n", "p"], regression=False,
            source="test.tsv",
        )


def test_inferred_label_names_and_regression() -> None:
    assert infer_label_names([10, 2, 2, 0]) == ["0", "2", "10"]
    assert infer_label_names(["b", "a", 3, 1.0, None]) == ["1", "3", "a", "b"]
    ex = examples_from_frame(
        pd.DataFrame({"s": ["x", "y", "z"], "label": ["b", "a", "b"]}),
        text_fields=["s"], label_field="label", label_names=None, regression=False, source="t",
    )
    assert ex.labels.tolist() == [1, 0, 1]
    reg = examples_from_frame(
        pd.DataFrame({"s": ["x", "y"], "label": ["1.5", 4]}),
        text_fields=["s"], label_field="label", label_names=None, regression=True, source="t",
    )
    assert reg.labels.dtype == np.float32 and reg.labels.tolist() == [1.5, 4.0]
    with pytest.raises(SupermaskError, match=r"non-numeric label 'high'"):
        examples_from_frame(
            pd.DataFrame({"s": ["x"], "label": ["high"]}),
            text_fields=["s"], label_field="label", label_names=None, regression=True, source="t",
        )


def test_examples_subset() -> None:
    ex = Examples(texts=[["a", "b", "c"], ["x", "y", "z"]], labels=np.array([0, 1, 0]))
    sub = ex.subset(np.array([2, 0]))
    assert sub.texts == [["c", "a"], ["z", "x"]] and sub.labels.tolist() == [0, 0]
    with pytest.raises(ValueError):
        Examples(texts=[["a"]], labels=np.array([0, 1]))


@pytest.mark.skipif(not SST2_VALIDATION.exists(), reason="real SST-2 data not present")
def test_real_sst2_validation() -> None:
    spec = get_task("sst2")
    ex = examples_from_frame(
        read_table(str(SST2_VALIDATION)),
        text_fields=spec.text_fields, label_field="label", label_names=spec.label_names, regression=False,
        source=str(SST2_VALIDATION),
    )
    assert len(ex) == 872
    assert np.bincount(ex.labels).tolist() == [428, 444]


# --------------------------------------------------------------------------------------------- hub


def test_hub_offline() -> None:
    assert hub_available() is False
    spec = TaskSpec("x", ("sentence",), ("a", "b"), ("accuracy",), hub_path="no-such-org/no-such-set")
    with pytest.raises(SupermaskError, match=r"set data.train_file/data.eval_file to use local files$"):
        load_hub_split(spec, "train")


# ---------------------------------------------------------------------------------------- sampling


def test_sample_indices() -> None:
    assert sample_indices(5, None, 0).tolist() == [0, 1, 2, 3, 4]
    assert sample_indices(5, 9, 0).tolist() == [0, 1, 2, 3, 4]
    picked = sample_indices(100, 10, 3)
    assert len(picked) == 10 and len(set(picked.tolist())) == 10
    assert picked.tolist() == sorted(picked.tolist())
    assert picked.tolist() == sample_indices(100, 10, 3).tolist()
    assert picked.tolist() != sample_indices(100, 10, 4).tolist()


LABELS = np.repeat(np.arange(4), 25)  # 100 examples, 4 classes, sorted


def _check_partition(parts: list[np.ndarray], n: int, num_clients: int) -> None:
    assert len(parts) == num_clients
    assert all(len(p) > 0 and p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)
    joined = np.concatenate(parts)
    assert len(joined) == n and set(joined.tolist()) == set(range(n))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_partition_disjoint_covering_deterministic(scheme: str) -> None:
    parts = partition(LABELS, 5, scheme, seed=1)
    _check_partition(parts, 100, 5)
    again = partition(LABELS, 5, scheme, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition(LABELS, 5, scheme, seed=2)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_iid_sizes() -> None:
    assert [len(p) for p in partition(LABELS, 3, "iid", seed=0)] == [34, 33, 33]


def _concentration(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean over classes of the largest share of that class held by a single client."""
    counts = np.stack([np.bincount(labels[p], minlength=labels.max() + 1) for p in parts])
    return float(np.mean(counts.max(axis=0) / counts.sum(axis=0)))


def test_dirichlet_small_alpha_is_skewed() -> None:
    skewed = partition(LABELS, 4, "dirichlet", seed=0, alpha=0.05)
    _check_partition(skewed, 100, 4)
    assert _concentration(skewed, LABELS) > 0.8
    assert _concentration(partition(LABELS, 4, "iid", seed=0), LABELS) < 0.5


def test_dirichlet_impossible_split_errors() -> None:
    with pytest.raises(SupermaskError, match=r"federation.dirichlet_alpha"):
        partition(np.zeros(10, dtype=np.int64), 10, "dirichlet", seed=0, alpha=0.001)


def test_shards_limit_labels_per_client() -> None:
    labels = np.repeat(np.arange(4), 10)
    parts = partition(labels, 4, "shards", seed=0, shards_per_client=2)
    _check_partition(parts, 40, 4)
    assert [len(p) for p in parts] == [10, 10, 10, 10]
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)
    with pytest.raises(SupermaskError, match=r"federation.shards_per_client"):
        partition(labels, 4, "shards", seed=0, shards_per_client=11)


@pytest.mark.parametrize("scheme", ["dirichlet", "shards"])
def test_regression_partition(scheme: str) -> None:
    labels = np.linspace(0.0, 5.0, 50).astype(np.float32)
    _check_partition(partition(labels, 5, scheme, seed=0, regression=True), 50, 5)


def test_partition_errors() -> None:
    with pytest.raises(SupermaskError, match=r"^federation.num_clients=0 must be between 1 and"):
        partition(LABELS, 0, "iid", seed=0)
    with pytest.raises(SupermaskError, match=r"federation.num_clients=101"):
        partition(LABELS, 101, "iid", seed=0)
    with pytest.raises(SupermaskError, match=r"^unknown federation.partition 'random'; use one of: iid, dirichlet"):
        partition(LABELS, 2, "random", seed=0)


def test_client_indices() -> None:
    parts = partition(LABELS, 4, "shards", seed=5, shards_per_client=3)
    got = client_indices(LABELS, 4, 2, "shards", 5, shards_per_client=3)
    assert np.array_equal(got, parts[2])
    with pytest.raises(SupermaskError, match=r"^client 4 does not exist: federation.num_clients=4"):
        client_indices(LABELS, 4, 4, "iid", 0)
