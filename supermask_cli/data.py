"""Loading labelled examples (local files or the Hugging Face hub) and splitting them across clients."""

from __future__ import annotations

import csv
import os
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlsplit

import fsspec
import numpy as np
import pandas as pd

from supermask_cli.errors import SupermaskError
from supermask_cli.tasks import TaskSpec

PARTITION_SCHEMES = ("iid", "dirichlet", "shards")
REGRESSION_BINS = 5  # quantile bins that stand in for classes when non-iid splitting regression labels
DIRICHLET_TRIES = 100  # resamples before giving up on a split where every client gets an example

_INT_TEXT = re.compile(r"-?\d+")


@dataclass
class Examples:
    """Labelled examples: one list of strings per text field (column-major) and one label per row."""

    texts: list[list[str]]
    labels: np.ndarray  # int64 class ids, or float32 for regression

    def __post_init__(self) -> None:
        lengths = {len(column) for column in self.texts} | {len(self.labels)}
        if len(lengths) > 1:
            raise ValueError(f"text columns and labels differ in length: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> Examples:
        """The examples at `indices`, in that order."""
        rows = np.asarray(indices, dtype=np.int64)
        return Examples(texts=[[column[i] for i in rows] for column in self.texts], labels=self.labels[rows])


# ---------------------------------------------------------------------------------------------- files

_READERS: dict[str, tuple[str, Callable[[IO[bytes]], pd.DataFrame]]] = {
    ".tsv": ("TSV", lambda f: pd.read_csv(f, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False)),
    ".csv": ("CSV", lambda f: pd.read_csv(f, keep_default_na=False)),
    ".jsonl": ("JSON lines", lambda f: pd.read_json(f, lines=True)),
    ".json": ("JSON lines", lambda f: pd.read_json(f, lines=True)),
    ".parquet": ("Parquet", pd.read_parquet),
}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_table(path: str, *, key: str | None = None) -> pd.DataFrame:
    """Read a .tsv/.csv/.jsonl/.json/.parquet file (any fsspec URL); `key` is the config key named in errors."""
    where = f" ({key})" if key else ""
    extension = os.path.splitext(path)[1].lower()
    if extension not in _READERS:
        supported = ", ".join(_READERS)
        raise SupermaskError(f"data file '{path}'{where} has an unsupported extension; use one of: {supported}")
    kind, reader = _READERS[extension]
    try:
        with fsspec.open(path, "rb") as handle:
            return reader(handle)
    except FileNotFoundError:
        raise SupermaskError(f"data file '{path}' not found{where}; check the path") from None
    except (OSError, ValueError, ImportError) as exc:
        raise SupermaskError(
            f"data file '{path}'{where} could not be read as {kind}: {_first_line(exc)}; check the file"
        ) from exc


# --------------------------------------------------------------------------------------------- labels


def _label_text(value: Any) -> str:
    """Canonical string form of a label cell: integral numbers print without a decimal point."""
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def infer_label_names(df_labels: Sequence) -> list[str]:
    """Distinct labels as strings: integers first (numerically), then other strings (sorted); missing cells skipped."""
    texts = {_label_text(v) for v in pd.unique(pd.Series(list(df_labels), dtype=object).dropna())}
    return sorted(texts, key=lambda t: (0, int(t), "") if _INT_TEXT.fullmatch(t) else (1, 0, t))


def _class_id(text: str, index: dict[str, int], source: str, field: str) -> int:
    """Class id of one label: its position in the label names, else an integer id in range."""
    if text in index:
        return index[text]
    names = ", ".join(index)
    if _INT_TEXT.fullmatch(text) is None:
        raise SupermaskError(
            f"data file '{source}' has unknown label '{text}' in column '{field}'; "
            f"expected one of: {names} (set data.label_names to match the file)"
        )
    class_id = int(text)
    if class_id == -1:
        raise SupermaskError(
            f"data file '{source}' has unlabelled rows (label -1 in column '{field}', as in GLUE test splits); "
            "use a labelled split"
        )
    if not 0 <= class_id < len(index):
        raise SupermaskError(
            f"data file '{source}' has label {class_id} in column '{field}', outside 0..{len(index) - 1} "
            f"for label names [{names}]; fix the file or set data.label_names"
        )
    return class_id


def _class_labels(values: pd.Series, label_names: Sequence[str], source: str, field: str) -> np.ndarray:
    index = {str(name): i for i, name in enumerate(label_names)}
    mapping = {value: _class_id(_label_text(value), index, source, field) for value in pd.unique(values)}
    return np.array([mapping[v] for v in values.tolist()], dtype=np.int64)


def _regression_labels(values: pd.Series, source: str, field: str) -> np.ndarray:
    numbers = pd.to_numeric(values, errors="coerce")
    bad = values[numbers.isna()]
    if len(bad):
        raise SupermaskError(
            f"data file '{source}' has non-numeric label '{bad.iloc[0]}' in column '{field}'; "
            "regression labels must be numbers (or set data.regression: false)"
        )
    return numbers.to_numpy(dtype=np.float32)


def _text_column(values: pd.Series) -> list[str]:
    return [str(v) for v in values.astype(object).fillna("").tolist()]


def examples_from_frame(
    df: pd.DataFrame,
    *,
    text_fields: Sequence[str],
    label_field: str,
    label_names: Sequence[str] | None,
    regression: bool,
    source: str,
) -> Examples:
    """Pick the text and label columns out of a table; `source` names the file in errors.

    Classification labels are label names or integer class ids; with `label_names` None the names are
    inferred from this table (pass the training file's names when loading evaluation data).
    """
    present = ", ".join(map(str, df.columns))
    for column, key in [*((f, "data.text_fields") for f in text_fields), (label_field, "data.label_field")]:
        if column not in df.columns:
            raise SupermaskError(
                f"data file '{source}' has no column '{column}' ({key}); columns present: {present}"
            )
    if df.empty:
        raise SupermaskError(f"data file '{source}' has no rows; use a file with examples")
    values = df[label_field]
    if {_label_text(v) for v in pd.unique(values)} == {"-1"}:
        raise SupermaskError(
            f"data file '{source}' has no labels (every '{label_field}' is -1, as in GLUE test splits); "
            "use a labelled split"
        )
    if regression:
        labels = _regression_labels(values, source, label_field)
    else:
        names = infer_label_names(values) if label_names is None else label_names
        labels = _class_labels(values, names, source, label_field)
    return Examples(texts=[_text_column(df[f]) for f in text_fields], labels=labels)


# ------------------------------------------------------------------------------------------------ hub


def load_hub_split(task: TaskSpec, split: str) -> pd.DataFrame:
    """One split of a hub dataset as a DataFrame; any failure becomes a SupermaskError."""
    try:
        import datasets  # slow import, only needed for hub data

        return datasets.load_dataset(task.hub_path, task.hub_config or None, split=split).to_pandas()
    except Exception as exc:  # noqa: BLE001 - network, cache and dataset errors all mean the same to the user
        raise SupermaskError(
            f"could not load {task.hub_path}/{task.hub_config} split '{split}' from the Hugging Face hub "
            f"({type(exc).__name__}: {_first_line(exc)[:200]}); set data.train_file/data.eval_file to use local files"
        ) from exc


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_available(timeout: float = 3.0) -> bool:
    """Whether the hub looks reachable: False when offline mode is set, else a TCP connect to the endpoint."""
    if _env_flag("HF_HUB_OFFLINE") or _env_flag("HF_DATASETS_OFFLINE"):
        return False
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------------- splitting


def sample_indices(n: int, max_examples: int | None, seed: int) -> np.ndarray:
    """Sorted seeded sample of min(n, max_examples) row indices; all rows when max_examples is None."""
    if max_examples is None or max_examples >= n:
        return np.arange(n, dtype=np.int64)
    chosen = np.random.default_rng(seed).choice(n, size=max_examples, replace=False)
    return np.sort(chosen).astype(np.int64)


def _class_codes(labels: np.ndarray, regression: bool) -> np.ndarray:
    """Integer class per example; regression labels fall into quantile bins."""
    if regression:
        edges = np.quantile(labels, np.linspace(0, 1, REGRESSION_BINS + 1)[1:-1])
        return np.searchsorted(edges, labels, side="right")
    return np.unique(labels, return_inverse=True)[1].reshape(-1)


def _iid(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    return np.array_split(rng.permutation(n), num_clients)


def _dirichlet(codes: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    for _ in range(DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for code in np.unique(codes):
            members = rng.permutation(np.flatnonzero(codes == code))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
            for client, piece in enumerate(np.split(members, cuts)):
                parts[client].append(piece)
        clients = [np.concatenate(p) for p in parts]
        if min(len(c) for c in clients) > 0:
            return clients
    raise SupermaskError(
        f"federation.partition=dirichlet left a client with no examples in {DIRICHLET_TRIES} tries "
        f"({num_clients} clients, {len(codes)} examples, alpha {alpha}); "
        "raise federation.dirichlet_alpha or lower federation.num_clients"
    )


def _shards(codes: np.ndarray, num_clients: int, per_client: int, rng: np.random.Generator) -> list[np.ndarray]:
    num_shards = num_clients * per_client
    if num_shards > len(codes):
        raise SupermaskError(
            f"federation.shards_per_client={per_client} with {num_clients} clients needs {num_shards} shards "
            f"but there are only {len(codes)} examples; lower federation.shards_per_client"
        )
    shuffled = rng.permutation(len(codes))
    ordered = shuffled[np.argsort(codes[shuffled], kind="stable")]
    shards = np.array_split(ordered, num_shards)
    owners = rng.permutation(num_shards).reshape(num_clients, per_client)
    return [np.concatenate([shards[s] for s in row]) for row in owners]


def partition(
    labels: np.ndarray,
    num_clients: int,
    scheme: str,
    seed: int,
    *,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    regression: bool = False,
) -> list[np.ndarray]:
    """Split example indices into `num_clients` disjoint, covering, sorted index arrays (deterministic per seed)."""
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    if not 1 <= num_clients <= n:
        raise SupermaskError(
            f"federation.num_clients={num_clients} must be between 1 and the number of training examples ({n}); "
            "lower federation.num_clients or use more data"
        )
    if scheme not in PARTITION_SCHEMES:
        raise SupermaskError(
            f"unknown federation.partition '{scheme}'; use one of: {', '.join(PARTITION_SCHEMES)}"
        )
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        clients = _iid(n, num_clients, rng)
    elif scheme == "dirichlet":
        clients = _dirichlet(_class_codes(labels, regression), num_clients, alpha, rng)
    else:
        clients = _shards(_class_codes(labels, regression), num_clients, shards_per_client, rng)
    return [np.sort(c).astype(np.int64) for c in clients]


def client_indices(
    labels: np.ndarray, num_clients: int, client: int, scheme: str, seed: int, **kw: Any
) -> np.ndarray:
    """The indices of one client's share under `partition`."""
    if not 0 <= client < num_clients:
        raise SupermaskError(
            f"client {client} does not exist: federation.num_clients={num_clients} allows clients "
            f"0..{num_clients - 1}; pick a client in that range"
        )
    return partition(labels, num_clients, scheme, seed, **kw)[client]
