"""The run's metrics log: ``metrics.jsonl`` rows (eval metrics plus the uploads of each round)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import checkpoint, storage
from .checkpoint import ClientRecord, DroppedRecord, FileMeta
from .errors import SupermaskError
from .layout import Layout


@dataclass
class AggregateResult:
    path: str
    round: int
    rule: str
    clients: list[ClientRecord]
    dropped: list[DroppedRecord]
    num_examples: int
    density: float
    upload_bytes: int | None  # None: not published (client-level privacy)
    bits_per_weight: float | None
    seconds: float
    missing: list[int] | None = None
    waiting: str | None = None  # secure aggregation: what the round still waits for (no global written yet)


def aggregate_result(path: str, meta: FileMeta, density: float, seconds: float) -> AggregateResult:
    """Round statistics from an aggregated global's metadata."""
    agg = meta.aggregation
    assert agg is not None
    sizes = [c.bytes or 0 for c in agg.clients]
    bits = [c.mask_bits or 0 for c in agg.clients]
    published = all(c.bytes is not None and c.mask_bits is not None for c in agg.clients)  # not in client mode
    return AggregateResult(
        path=path,
        round=meta.round - 1,
        rule=agg.rule,
        clients=agg.clients,
        dropped=agg.dropped,
        num_examples=meta.num_examples,
        density=density,
        upload_bytes=sum(sizes) if published else None,
        bits_per_weight=sum(bits) / max(len(bits), 1) / meta.num_weights if published else None,
        seconds=seconds,
        missing=list(agg.missing),
    )


def upload_summary(layout: Layout, rnd: int) -> AggregateResult | None:
    """Round ``rnd``'s upload statistics, read back from round ``rnd + 1``'s global metadata."""
    path = layout.global_path(rnd + 1)
    meta = checkpoint.read_meta(path)
    return aggregate_result(path, meta, float("nan"), 0.0) if meta.aggregation else None


def read_metrics(path: str) -> dict[str, Any]:
    return json.loads(storage.read_bytes(path, 1 << 20, what="metrics"))


def round_rows(layout: Layout) -> list[dict[str, Any]]:
    """Every evaluated round's ``metrics.json`` plus the uploads that trained from that round's
    global (``upload_bytes``, ``bits_per_weight``, ``upload_clients``), once aggregated."""
    rows = []
    rounds = layout.rounds()
    for rnd in rounds:
        if not storage.exists(layout.metrics_path(rnd)):
            continue
        row = read_metrics(layout.metrics_path(rnd))
        upload = upload_summary(layout, rnd) if rnd + 1 in rounds else None
        if upload is not None:
            row.update(upload_clients=len(upload.clients))
            if upload.upload_bytes is not None:
                row.update(upload_bytes=upload.upload_bytes, bits_per_weight=upload.bits_per_weight)
        rows.append(row)
    return rows


def write_metrics_rows(layout: Layout, rows: list[dict[str, Any]]) -> None:
    """Write ``metrics.jsonl``: one JSON object per round (a derived file, rewritten whole)."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    storage.write_text_atomic(layout.metrics_log, text, force=True)


def read_metrics_rows(layout: Layout) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` (one JSON object per round, each with ``round``), by round."""
    path = layout.metrics_log
    rows = []
    for number, line in enumerate(storage.read_bytes(path, 1 << 24, what="metrics log").decode().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SupermaskError(f"{path}:{number}: not a JSON object ({exc.msg}); each line is one round's metrics") from None
        if not isinstance(row, dict) or not isinstance(row.get("round"), int):
            raise SupermaskError(f"{path}:{number}: each line must be a JSON object with an integer 'round'")
        rows.append(row)
    if not rows:
        raise SupermaskError(f"{path}: no rounds in the metrics log")
    return sorted(rows, key=lambda r: r["round"])


def write_metrics_log(layout: Layout) -> list[dict[str, Any]]:
    """Rebuild ``metrics.jsonl`` from :func:`round_rows`."""
    rows = round_rows(layout)
    write_metrics_rows(layout, rows)
    return rows
