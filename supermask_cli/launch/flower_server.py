"""The Flower ServerApp: a supermask run's rounds over SuperNodes, one client per SuperNode.

Each round it samples the round's clients (:func:`supermask_cli.sampling.participants`, as every
launcher does), sends each sampled node the config and the round's global (a delta when the node
holds the previous global), writes the uploads into the usual run directory and calls
``steps.aggregate`` and ``steps.evaluate``. Run config (``flwr run --run-config``):
``config`` (YAML path), ``set`` (``key=value`` overrides separated by ``;``), ``workdir`` (where
relative paths resolve; "" = where the ServerApp starts), ``round-timeout`` and
``connect-timeout`` (seconds).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from .. import checkpoint, steps, storage, transport
from ..config import Config, dump_config, load_config
from ..errors import SupermaskError
from ..layout import Layout
from . import flower_wire as wire

POLL_SECONDS = 0.5
REDISCOVER_SECONDS = 15.0  # how long a round start waits for the SuperNode of a client that has none

app = ServerApp()


@dataclass(frozen=True)
class Settings:
    config: str
    overrides: list[str]
    workdir: str
    round_timeout: float
    connect_timeout: float

    @classmethod
    def from_run_config(cls, run_config: dict) -> Settings:
        if not run_config.get("config"):
            raise SupermaskError("flwr run config 'config' is empty; pass --run-config 'config=\"path.yaml\"'")
        return cls(
            config=str(run_config["config"]),
            overrides=[s.strip() for s in str(run_config.get("set", "")).split(";") if s.strip()],
            workdir=str(run_config.get("workdir", "")),
            round_timeout=float(run_config.get("round-timeout", 3600)),
            connect_timeout=float(run_config.get("connect-timeout", 300)),
        )


@dataclass
class Traffic:
    """Bytes of the round's global sent to each client (``down``) and of its upload (``up``)."""

    down: dict[int, int] = field(default_factory=dict)
    up: dict[int, int] = field(default_factory=dict)
    delta: list[int] = field(default_factory=list)  # clients that got the global as a delta
    refused: dict[int, str] = field(default_factory=dict)  # clients whose privacy policy refused, and why

    def row(self, mode: str) -> dict:
        """For ``rounds.jsonl``: in client mode no upload's size (a function of an un-noised upload)."""
        row = asdict(self)
        if mode == "client":
            del row["up"]
        return row


@dataclass
class Node:
    node_id: int
    holds: str  # digest of the global the node holds ("" when none)


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = Settings.from_run_config(context.run_config)
    if settings.workdir:
        os.chdir(settings.workdir)
    cfg = load_config(settings.config, settings.overrides)
    try:
        serve(grid, cfg, settings)
    except SupermaskError as exc:
        _status(Layout(cfg.run_dir), "failed", str(exc))
        print(f"supermask: error: {exc}", flush=True)
        raise SystemExit(2) from None
    _status(Layout(cfg.run_dir), "done", "")


def _status(layout: Layout, state: str, error: str) -> None:
    """``<run_dir>/flower/status.json``: how the last Flower run ended (the local script reads it)."""
    text = json.dumps({"state": state, "error": error}) + "\n"
    storage.write_text_atomic(storage.join(layout.run_dir, "flower", "status.json"), text, force=True)


def serve(grid: Grid, cfg: Config, settings: Settings) -> None:
    """Every round: evaluate, train the sampled clients on their nodes, aggregate (resumes like ``run``)."""
    layout = Layout(cfg.run_dir)
    if not storage.exists(layout.global_path(0)):
        steps.init(cfg)
    fed = cfg.federation
    nodes = discover(grid, fed.num_clients, settings.connect_timeout)
    for rnd in range(fed.rounds + 1):
        start = time.perf_counter()
        if not storage.exists(layout.metrics_path(rnd)):
            steps.evaluate(cfg, rnd=rnd)
        if rnd == fed.rounds or storage.exists(layout.global_path(rnd + 1)):
            continue
        chosen = steps.write_participants(layout, cfg, rnd)
        pending = [c for c in chosen if not storage.exists(layout.client_path(rnd, c))]
        online = set(grid.get_node_ids())
        if any(c not in nodes or nodes[c].node_id not in online for c in pending):
            nodes = discover(grid, fed.num_clients, REDISCOVER_SECONDS, nodes)
        failures, traffic = train_round(grid, cfg, layout, rnd, pending, nodes, settings.round_timeout)
        uploaded = len(chosen) - len(failures)
        why = "; ".join(f"client {c}: {reason}" for c, reason in sorted(failures.items()))
        if uploaded < fed.min_clients:
            raise SupermaskError(
                f"round {rnd}: {uploaded} of {len(chosen)} sampled clients uploaded, federation.min_clients is "
                f"{fed.min_clients} ({why})"
            )
        if failures:
            print(f"supermask: round {rnd}: aggregating {uploaded} of {len(chosen)} clients ({why})", flush=True)
        result = steps.aggregate(cfg, rnd=rnd)
        seconds = time.perf_counter() - start
        _log_round(layout, {"round": rnd, "wall_s": seconds, "clients": len(result.clients),
                            **traffic.row(cfg.privacy.mode)})
        print(
            f"supermask: round {rnd} -> {result.path}: {len(result.clients)} clients, global sent as a delta to "
            f"{len(traffic.delta)} of {len(traffic.down)} nodes, {seconds:.1f} s",
            flush=True,
        )


def _log_round(layout: Layout, row: dict) -> None:
    """Append one line to ``<run_dir>/flower/rounds.jsonl`` (wall time and bytes per client)."""
    path = storage.join(layout.run_dir, "flower", "rounds.jsonl")
    old = storage.read_bytes(path, 1 << 26, what="log").decode() if storage.exists(path) else ""
    storage.write_text_atomic(path, old + json.dumps(row, sort_keys=True) + "\n", force=True)


def discover(grid: Grid, num_clients: int, timeout: float, known: dict[int, Node] | None = None) -> dict[int, Node]:
    """Ask every connected SuperNode its client id until all ``num_clients`` answered or ``timeout``.
    ``known`` nodes still connected are kept; a client whose node left is asked for again (a
    restarted SuperNode comes back with a new node id)."""
    deadline = time.monotonic() + timeout
    online = set(grid.get_node_ids())
    nodes = {c: n for c, n in (known or {}).items() if n.node_id in online}
    asked = {n.node_id for n in nodes.values()}
    while len(nodes) < num_clients and time.monotonic() < deadline:
        new = sorted(set(grid.get_node_ids()) - asked)
        asked.update(new)
        queries = [Message(RecordDict(), dst_node_id=n, message_type="query") for n in new]
        replies, _ = exchange(grid, queries, max(deadline - time.monotonic(), 1.0))
        for node_id, reply in replies.items():
            if reply.has_error():
                continue
            client = int(reply.content[wire.NODE]["client-id"])
            if client in nodes:
                raise SupermaskError(f"two SuperNodes say client-id={client}; give each node its own client-id")
            if not 0 <= client < num_clients:
                raise SupermaskError(f"a SuperNode says client-id={client}, outside 0..{num_clients - 1}")
            nodes[client] = Node(node_id=node_id, holds=str(reply.content[wire.NODE]["holds"]))
        if len(nodes) < num_clients:
            time.sleep(POLL_SECONDS)
    return nodes


def exchange(grid: Grid, messages: list[Message], timeout: float) -> tuple[dict[int, Message], dict[int, str]]:
    """Send messages and collect the replies by node until every node replied, left the SuperLink,
    or ``timeout`` passed. Returns (replies, failure reason of every other node)."""
    if not messages:
        return {}, {}
    ids = list(grid.push_messages(messages))
    waiting = {mid: m.metadata.dst_node_id for mid, m in zip(ids, messages)}
    replies: dict[int, Message] = {}
    failed: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while waiting:
        for reply in grid.pull_messages(list(waiting)):
            node = waiting.pop(reply.metadata.reply_to_message_id, None)
            if node is not None:
                replies[node] = reply
        if not waiting:
            break
        if time.monotonic() >= deadline:
            failed.update({node: f"no reply within {timeout:.0f} s" for node in waiting.values()})
            break
        online = set(grid.get_node_ids())
        for mid, node in list(waiting.items()):
            if node not in online:
                failed[node] = "its SuperNode left the SuperLink"
                del waiting[mid]
        time.sleep(POLL_SECONDS)
    return replies, failed


def train_round(
    grid: Grid, cfg: Config, layout: Layout, rnd: int, clients: list[int], nodes: dict[int, Node], timeout: float
) -> tuple[dict[int, str], Traffic]:
    """Train ``clients`` on their nodes and write their uploads; returns why each failed client
    failed, and the bytes moved."""
    full = storage.read_bytes(layout.global_path(rnd), checkpoint.MAX_FILE_BYTES, what="checkpoint")
    digest = checkpoint.file_digest(full)
    parent = checkpoint.read_meta(layout.global_path(rnd)).parent_digest
    fetch = transport.download(cfg, layout, rnd) if rnd > 0 else None
    failures = {c: f"no SuperNode with client-id={c} connected" for c in clients if c not in nodes}
    text = dump_config(cfg)
    traffic = Traffic()

    def message(client: int, delta: bool) -> Message:
        setup = ConfigRecord({"config": text, "round": rnd, "client": client, "digest": digest, "delta": delta})
        payload = fetch.data if delta and fetch is not None else full
        traffic.down[client] = traffic.down.get(client, 0) + len(payload)
        if delta:
            traffic.delta.append(client)
        elif client in traffic.delta:  # resent in full
            traffic.delta.remove(client)
        content = RecordDict({wire.SETUP: setup, wire.GLOBAL: wire.file_record(payload)})
        return Message(content, dst_node_id=nodes[client].node_id, message_type="train", group_id=str(rnd))

    by_node = {nodes[c].node_id: c for c in clients if c in nodes}
    delta_ok = fetch is not None and fetch.is_delta
    todo = [message(c, delta_ok and nodes[c].holds == parent) for c in clients if c in nodes]
    for attempt in range(2):  # a node that cannot rebuild the delta gets the full file once
        replies, failed = exchange(grid, todo, timeout)
        failures.update({by_node[n]: reason for n, reason in failed.items()})
        todo = []
        for node, reply in replies.items():
            client = by_node[node]
            if reply.has_error():
                failures[client] = f"the ClientApp failed: {_last_line(reply.error.reason)}"
                continue
            result = reply.content[wire.RESULT]
            if result["status"] == wire.REFUSED:
                failures[client] = f"refused by its privacy policy: {result['reason']}"
                traffic.refused[client] = str(result["reason"])
                print(f"supermask: round {rnd}: client {client} refused: {result['reason']}", flush=True)
                continue
            if result["status"] == wire.NEED_FULL and attempt == 0:
                todo.append(message(client, False))
                continue
            try:
                upload = wire.record_bytes(reply.content[wire.UPLOAD], f"client {client}")
                _write_upload(layout, rnd, client, upload)
            except (ValueError, SupermaskError) as exc:
                failures[client] = str(exc)
                continue
            nodes[client].holds = str(result["holds"])
            traffic.up[client] = len(upload)
        if not todo:
            break
    return failures, traffic


def _write_upload(layout: Layout, rnd: int, client: int, data: bytes) -> None:
    """Store a node's upload as the client's file, once its header says it is that client's."""
    path = layout.client_path(rnd, client)
    header, _ = checkpoint.parse_header(data, f"client {client}'s upload")
    meta = checkpoint.parse_meta(header, f"client {client}'s upload")
    if meta.client != client:
        raise SupermaskError(f"client {client}'s node uploaded a file of client {meta.client}")
    storage.write_atomic(path, data, force=True)


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no reason given"
