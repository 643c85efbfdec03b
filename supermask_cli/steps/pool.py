"""Which examples a client or the evaluation sees: labels, the training pool, each client's share.

Every party of a run must cut its share from the same pool. ``init`` records the pool's identity
(:class:`~supermask_cli.checkpoint.PoolMeta`: where it came from, how many rows, a digest of its
rows) in round 0's global; each client recomputes it and refuses to train on a different pool.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .. import data
from ..checkpoint import PoolMeta
from ..config import Config
from ..errors import SupermaskError
from ..tasks import TaskSpec, get_task


def task_spec(cfg: Config) -> TaskSpec | None:
    return get_task(cfg.task) if cfg.task else None


def text_fields(cfg: Config) -> list[str]:
    task = task_spec(cfg)
    if cfg.data.text_fields:
        return cfg.data.text_fields
    if task is None:
        raise SupermaskError("data.text_fields is required when no GLUE task is set (e.g. [text])")
    return list(task.text_fields)


def is_regression(cfg: Config) -> bool:
    task = task_spec(cfg)
    return task.is_regression if task else cfg.data.regression


def metric_names(cfg: Config) -> list[str]:
    """The task's metrics; custom data: Pearson/Spearman, binary F1 for two classes, else macro F1."""
    task = task_spec(cfg)
    if task:
        return list(task.metrics)
    if cfg.data.regression:
        return ["pearson", "spearman"]
    binary = cfg.data.label_names is not None and len(cfg.data.label_names) == 2
    return ["accuracy", "f1" if binary else "f1_macro"]


def resolve_source(cfg: Config) -> str:
    """``hub`` or ``local``. ``auto`` is the hub when a GLUE task is set and the hub answers; ``init``
    records the answer (in the resolved config and round 0's pool record) so that no other
    machine decides differently."""
    if cfg.data.source == "hub" and task_spec(cfg) is None:
        raise SupermaskError("data.source is 'hub' but no GLUE task is set; set `task:` or use data.source: local")
    if cfg.data.source != "auto":
        return cfg.data.source
    if task_spec(cfg) is None:
        return "local"
    return "hub" if data.hub_available() else "local"


def _split_frame(cfg: Config, split: str):
    task = task_spec(cfg)
    key = "data.train_file" if split == "train" else "data.eval_file"
    path = cfg.data.train_file if split == "train" else cfg.data.eval_file
    if resolve_source(cfg) == "hub":
        assert task is not None
        name = task.train_split if split == "train" else task.eval_split
        try:
            return data.load_hub_split(task, name), f"hub:{task.name}"
        except SupermaskError:
            raise
        except Exception as exc:  # network, cache or parsing: never continue with part of a split
            raise SupermaskError(
                f"loading {task.name}/{name} from the hub failed ({type(exc).__name__}: {str(exc)[:120]}); "
                f"retry, or use data.source: local with {key}"
            ) from None
    if path is None:
        raise SupermaskError(f"{key} is not set and the hub is not used; give a local data file")
    return data.read_table(path, key=key), path


def decide_source(cfg: Config) -> str:
    """The source ``init`` records: ``auto`` tries the hub (when a task is set and it answers) by
    loading both splits, and falls back to the local files when that fails and they are set."""
    source = resolve_source(cfg)
    if cfg.data.source != "auto" or source != "hub":
        return source
    hub = cfg.model_copy(update={"data": cfg.data.model_copy(update={"source": "hub"})})
    try:
        _split_frame(hub, "train")
        _split_frame(hub, "eval")
    except SupermaskError:
        if cfg.data.train_file is None or cfg.data.eval_file is None:
            raise
        return "local"
    return "hub"


def load_examples(cfg: Config, split: str, label_names: list[str] | None, path: str | None = None) -> data.Examples:
    """Examples of ``split`` (``train`` or ``eval``), or of the file ``path`` when given."""
    if path is not None:
        frame, source = data.read_table(path, key="data.client_train_file"), path
    else:
        frame, source = _split_frame(cfg, split)
    return data.examples_from_frame(
        frame,
        text_fields=text_fields(cfg),
        label_field=cfg.data.label_field,
        label_names=label_names,
        regression=is_regression(cfg),
        source=source,
    )


def resolve_label_names(cfg: Config) -> list[str] | None:
    """Class names (None for regression): the task's, the config's, or inferred from the train file."""
    task = task_spec(cfg)
    if is_regression(cfg):
        return None
    if cfg.data.label_names:
        return list(cfg.data.label_names)
    if task is not None:
        return list(task.label_names or [])
    if cfg.data.train_file is None:
        raise SupermaskError("data.label_names is required when clients read their own files")
    frame = data.read_table(cfg.data.train_file, key="data.train_file")
    if cfg.data.label_field not in frame.columns:
        raise SupermaskError(f"data file '{cfg.data.train_file}' has no column '{cfg.data.label_field}' (data.label_field)")
    return data.infer_label_names(frame[cfg.data.label_field])


def resolved(cfg: Config, label_names: list[str] | None, pool: PoolMeta | None = None) -> Config:
    """The config with derivable values filled in (text fields, label names and, given the run's
    pool record, the data source chosen at ``init``), as ``init`` records it."""
    update: dict = {"label_names": label_names, "text_fields": text_fields(cfg)}
    if pool is not None and cfg.data.source == "auto":
        update["source"] = pool.source
    return cfg.model_copy(update={"data": cfg.data.model_copy(update=update)})


def train_pool(cfg: Config, label_names: list[str] | None) -> data.Examples:
    """The capped training set that the partition splits among clients."""
    examples = load_examples(cfg, "train", label_names)
    return examples.subset(data.sample_indices(len(examples), cfg.data.max_train_examples, cfg.seed))


def examples_digest(examples: data.Examples) -> str:
    """SHA-256 over the examples' rows in order (text fields and label), independent of where they came from."""
    h = hashlib.sha256()
    for column in examples.texts:
        h.update(len(column).to_bytes(8, "little"))
        for text in column:
            encoded = text.encode()
            h.update(len(encoded).to_bytes(8, "little"))
            h.update(encoded)
    h.update(np.ascontiguousarray(examples.labels).tobytes())
    return h.hexdigest()


def pool_meta(cfg: Config, label_names: list[str] | None) -> PoolMeta | None:
    """The identity of the pool clients partition (None when each client reads its own file)."""
    if cfg.data.client_train_file:
        return None
    pool = train_pool(cfg, label_names)
    return PoolMeta(source=resolve_source(cfg), num_examples=len(pool), digest=examples_digest(pool))


def check_pool(pool: data.Examples, recorded: PoolMeta | None, client: int) -> None:
    """A client's pool must be the one recorded at ``init`` (same rows, same order)."""
    if recorded is None:
        return
    if len(pool) != recorded.num_examples or examples_digest(pool) != recorded.digest:
        raise SupermaskError(
            f"client {client}: its training pool ({len(pool)} examples) differs from the one recorded at init "
            f"({recorded.num_examples} examples from {recorded.source}); every machine needs the same "
            "data.source, data.train_file contents and data.max_train_examples"
        )


def client_examples(cfg: Config, client: int, label_names: list[str] | None, recorded: PoolMeta | None = None) -> data.Examples:
    """Client ``client``'s data: its file from the template, or its share of the seeded partition
    (of the pool, checked against ``recorded`` when given)."""
    fed = cfg.federation
    if not 0 <= client < fed.num_clients:
        raise SupermaskError(f"client {client} does not exist: federation.num_clients={fed.num_clients}")
    if cfg.data.client_train_file:
        path = cfg.data.client_train_file.format(client=client)
        examples = load_examples(cfg, "train", label_names, path=path)
        return examples.subset(data.sample_indices(len(examples), cfg.data.max_train_examples, cfg.seed))
    pool = train_pool(cfg, label_names)
    check_pool(pool, recorded, client)
    indices = data.client_indices(
        pool.labels,
        fed.num_clients,
        client,
        fed.partition,
        cfg.seed,
        alpha=fed.dirichlet_alpha,
        shards_per_client=fed.shards_per_client,
        regression=is_regression(cfg),
    )
    return pool.subset(indices)


def eval_examples(cfg: Config, label_names: list[str] | None) -> data.Examples:
    examples = load_examples(cfg, "eval", label_names)
    return examples.subset(data.sample_indices(len(examples), cfg.data.max_eval_examples, cfg.seed))
