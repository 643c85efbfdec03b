"""The Flower ServerApp's rounds, over a :class:`Link` (the Flower grid, or a scripted one in tests).

Each round it samples the round's clients (:func:`supermask_cli.sampling.participants`, as every
launcher does), sends each sampled node the config and the round's global (a delta when the node
holds the previous global), checks every reply (:mod:`.flower_replies`) and every upload in full
(the checks ``aggregate`` makes: size from the global before reading, format, metadata, tensors,
round, parent, client) before it is written into the run directory, then calls ``steps.aggregate``
and ``steps.evaluate``. A refused reply is one line naming its node, printed, kept in
``<run_dir>/flower/status.json`` and counted as that client's failure; the round then proceeds
under ``federation.min_clients``. Nothing a node sends makes the server raise.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Protocol

from .. import checkpoint, steps, storage, transport
from ..config import Config, dump_config
from ..errors import SupermaskError
from ..layout import Layout
from ..steps import admission
from . import flower_replies as replies
from . import flower_wire as wire
from .flower_identity import SELF_DECLARED_WARNING, Identities, load_clients_file
from .flower_replies import Refused, Sent
from .flower_wire import Outgoing, Reply

POLL_SECONDS = 0.5
REDISCOVER_SECONDS = 15.0  # how long a round start waits for the SuperNode of a client that has none
MAX_ASKS = 3  # a node whose reply or upload is refused is asked again, this many times in all, while the round lasts


class Link(Protocol):
    def node_ids(self) -> Iterable[int]: ...
    def send(self, messages: list[Outgoing]) -> list[str]: ...  # message ids, in order
    def receive(self, message_ids: list[str]) -> Iterable[Reply]: ...


@dataclass(frozen=True)
class Settings:
    config: str
    overrides: list[str]
    workdir: str
    round_timeout: float
    connect_timeout: float
    clients_file: str = ""  # node id -> client id, from the operator (launch.flower_identity)

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
            clients_file=str(run_config.get("clients-file", "")),
        )


@dataclass
class Journal:
    """Every refusal of the run, one line each (printed as it happens)."""

    refused: list[str] = field(default_factory=list)

    def refuse(self, line: str) -> None:
        self.refused.append(line)
        print(f"supermask: refused {line}", flush=True)


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


def status(layout: Layout, state: str, error: str, journal: Journal) -> None:
    """``<run_dir>/flower/status.json``: how the last Flower run ended (the local script reads it)."""
    text = json.dumps({"state": state, "error": error, "refused": journal.refused}) + "\n"
    storage.write_text_atomic(storage.join(layout.run_dir, "flower", "status.json"), text, force=True)


def run(link: Link, cfg: Config, settings: Settings, journal: Journal | None = None) -> int:
    """The whole run; its outcome always in status.json. Exit status: 0 done, 2 failed."""
    journal = journal if journal is not None else Journal()
    layout = Layout(cfg.run_dir)
    try:
        serve(link, cfg, settings, journal)
    except SupermaskError as exc:
        status(layout, "failed", str(exc), journal)
        print(f"supermask: error: {exc}", flush=True)
        return 2
    except BaseException as exc:  # a bug, or an interrupt: still say so, then let it propagate
        status(layout, "failed", f"the ServerApp stopped: {type(exc).__name__}: {replies.last_line(str(exc))}", journal)
        raise
    status(layout, "done", "", journal)
    return 0


def serve(link: Link, cfg: Config, settings: Settings, journal: Journal) -> None:
    """Every round: evaluate, train the sampled clients on their nodes, aggregate (resumes like ``run``)."""
    layout = Layout(cfg.run_dir)
    if cfg.secure_aggregation.enabled:
        raise SupermaskError("secure_aggregation: the Flower app does not carry its steps yet (issue 21); "
                             "use `supermask run` or the `supermask secagg` steps through a shared run_dir")
    if not storage.exists(layout.global_path(0)):
        steps.init(cfg)
    fed = cfg.federation
    ids = load_clients_file(settings.clients_file, fed.num_clients) if settings.clients_file else None
    if ids is None:
        print(SELF_DECLARED_WARNING, flush=True)
    nodes = discover(link, fed.num_clients, settings.connect_timeout, journal, ids=ids)
    for rnd in range(fed.rounds + 1):
        start = time.perf_counter()
        if not storage.exists(layout.metrics_path(rnd)):
            steps.evaluate(cfg, rnd=rnd)
        if rnd == fed.rounds or storage.exists(layout.global_path(rnd + 1)):
            continue
        chosen = steps.write_participants(layout, cfg, rnd)
        for client, reason in admission.recheck_present(cfg, layout, steps.load_global(layout.global_path(rnd)), rnd,
                                                        chosen).items():
            journal.refuse(f"client {client}'s file in round {rnd}: {reason} (moved to rejected/; asked again)")
        pending = [c for c in chosen if not storage.exists(layout.client_path(rnd, c))]
        online = set(link.node_ids())
        if any(c not in nodes or nodes[c].node_id not in online for c in pending):
            nodes = discover(link, fed.num_clients, REDISCOVER_SECONDS, journal, nodes, ids=ids)
        failures, traffic = train_round(link, cfg, layout, rnd, pending, nodes, settings.round_timeout, journal)
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


def discover(link: Link, num_clients: int, timeout: float, journal: Journal,
             known: dict[int, Node] | None = None, ids: Identities | None = None) -> dict[int, Node]:
    """Ask every connected SuperNode its client id until all ``num_clients`` answered or ``timeout``.
    ``known`` nodes still connected are kept; a client whose node left is asked for again (a
    restarted SuperNode comes back with a new node id). With ``ids`` (the operator's clients file) a
    node is the client the file binds it to, and refused when it is not in the file or says
    otherwise. Without, a claim of an id another node already holds is refused, and two nodes
    claiming one id in the same answer are both refused."""
    deadline = time.monotonic() + timeout
    online = set(link.node_ids())
    nodes = {c: n for c, n in (known or {}).items() if n.node_id in online}
    asked = {n.node_id for n in nodes.values()}
    while len(nodes) < num_clients and time.monotonic() < deadline:
        new = sorted(set(link.node_ids()) - asked)
        asked.update(new)
        answered, _ = exchange(link, [Outgoing(node=n, kind=wire.QUERY) for n in new],
                               max(deadline - time.monotonic(), 1.0), journal)
        claims: dict[int, list[tuple[int, str]]] = {}
        for sent, reply in answered:
            try:
                info = replies.query_reply(reply, sent, num_clients)
                if ids is not None:
                    info = replies.NodeInfo(client=ids.bind(reply.node, info.client), holds=info.holds)
            except Refused as exc:
                journal.refuse(str(exc))
                continue
            claims.setdefault(info.client, []).append((reply.node, info.holds))
        for client, claimants in sorted(claims.items()):
            if client in nodes:
                for node, _ in claimants:
                    journal.refuse(f"{replies.who(node)}: says client-id={client}, which node "
                                   f"{nodes[client].node_id} already is")
            elif len(claimants) > 1:
                named = ", ".join(str(n) for n, _ in claimants)
                for node, _ in claimants:
                    journal.refuse(f"{replies.who(node)}: says client-id={client}, as do nodes {named}: none is trusted")
            else:
                nodes[client] = Node(node_id=claimants[0][0], holds=claimants[0][1])
        if len(nodes) < num_clients:
            time.sleep(POLL_SECONDS)
    return nodes


def exchange(link: Link, messages: list[Outgoing], timeout: float, journal: Journal,
             info: dict[int, tuple[int | None, int | None]] | None = None,
             ) -> tuple[list[tuple[Sent, Reply]], dict[int, str]]:
    """Send messages and collect one reply per message until every node replied, left the
    SuperLink, or ``timeout`` passed. A reply to no outstanding message (unknown, already answered)
    or from another node than the one asked is refused and the wait goes on. ``info``: node ->
    (client, round) each message stands for. Returns (sent and reply pairs, failure per node)."""
    if not messages:
        return [], {}
    ids = [str(i) for i in link.send(messages)]
    info = info or {}
    waiting = {mid: Sent(message_id=mid, node=m.node, kind=m.kind, group=m.group, client=info.get(m.node, (None, None))[0],
                         round=info.get(m.node, (None, None))[1]) for mid, m in zip(ids, messages)}
    answered: list[tuple[Sent, Reply]] = []
    failed: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while waiting:
        for reply in link.receive(list(waiting)):
            sent = waiting.get(reply.reply_to)
            if sent is None:
                journal.refuse(f"{replies.who(reply.node)}: replied to message {reply.reply_to!r}, which is not "
                               "awaiting a reply (not sent, or already answered)")
            elif reply.node != sent.node:
                journal.refuse(f"{replies.who(reply.node)}: answered message {reply.reply_to!r}, sent to node "
                               f"{sent.node}")
            else:
                del waiting[reply.reply_to]
                answered.append((sent, reply))
        if not waiting:
            break
        if time.monotonic() >= deadline:
            failed.update({s.node: f"no reply within {timeout:.0f} s" for s in waiting.values()})
            break
        online = set(link.node_ids())
        for mid, sent in list(waiting.items()):
            if sent.node not in online:
                failed[sent.node] = "its SuperNode left the SuperLink"
                del waiting[mid]
        time.sleep(POLL_SECONDS)
    return answered, failed


def train_round(link: Link, cfg: Config, layout: Layout, rnd: int, clients: list[int], nodes: dict[int, Node],
                timeout: float, journal: Journal) -> tuple[dict[int, str], Traffic]:
    """Train ``clients`` on their nodes and write their checked uploads; returns why each failed
    client failed, and the bytes moved."""
    full = storage.read_bytes(layout.global_path(rnd), checkpoint.MAX_FILE_BYTES, what="checkpoint")
    gl = checkpoint.loads(full, layout.global_path(rnd))
    parent = gl.meta.parent_digest
    fetch = transport.download(cfg, layout, rnd) if rnd > 0 else None
    failures = {c: f"no SuperNode with client-id={c} connected" for c in clients if c not in nodes}
    text = dump_config(cfg)
    traffic = Traffic()
    max_bytes = checkpoint.max_client_bytes(gl.meta)

    def message(client: int, delta: bool) -> Outgoing:
        setup = {"config": text, "round": rnd, "client": client, "digest": gl.digest, "delta": delta}
        payload = fetch.data if delta and fetch is not None else full
        traffic.down[client] = traffic.down.get(client, 0) + len(payload)
        if delta:
            traffic.delta.append(client)
        elif client in traffic.delta:  # resent in full
            traffic.delta.remove(client)
        return Outgoing(node=nodes[client].node_id, kind=wire.TRAIN, group=str(rnd), setup=setup, payload=payload)

    by_node = {nodes[c].node_id: c for c in clients if c in nodes}
    delta_ok = fetch is not None and fetch.is_delta
    todo = [message(c, delta_ok and nodes[c].holds == parent) for c in clients if c in nodes]
    sent_full = {c: not (delta_ok and nodes[c].holds == parent) for c in by_node.values()}
    asked = {c: 1 for c in by_node.values()}
    deadline = time.monotonic() + timeout
    while todo:  # a node that cannot rebuild the delta gets the full file; a refused one is asked again
        answered, failed = exchange(link, todo, max(deadline - time.monotonic(), 0.0), journal,
                                    {n: (c, rnd) for n, c in by_node.items()})
        failures.update({by_node[n]: reason for n, reason in failed.items()})
        todo = []
        for sent, reply in answered:
            client = by_node[sent.node]
            again = asked[client] < MAX_ASKS and time.monotonic() < deadline
            try:
                got = replies.train_reply(reply, sent, max_bytes=max_bytes,
                                          max_examples=cfg.federation.max_client_examples,
                                          with_loss=cfg.privacy.mode == "none")
                if got.status == wire.REFUSED:
                    failures[client] = f"refused by its privacy policy: {got.reason}"
                    traffic.refused[client] = got.reason
                    print(f"supermask: round {rnd}: client {client} refused: {got.reason}", flush=True)
                    continue
                if got.status == wire.NEED_FULL:
                    if not sent_full.get(client):
                        sent_full[client] = True
                        asked[client] += 1
                        todo.append(message(client, False))
                        continue
                    raise replies.refuse(sent.node, client, "cannot use the full global it was sent")
                _write_upload(layout, cfg, gl, rnd, client, sent.node, got)
            except Refused as exc:
                failures[client] = str(exc)
                journal.refuse(str(exc))
                if again:
                    asked[client] += 1
                    sent_full[client] = True
                    todo.append(message(client, False))
                continue
            failures.pop(client, None)
            nodes[client].holds = got.holds
            traffic.up[client] = len(got.upload)
    return failures, traffic


def _write_upload(layout: Layout, cfg: Config, gl: checkpoint.Checkpoint, rnd: int, client: int, node: int,
                  got: replies.TrainReply) -> None:
    """Store a node's upload as the client's file once it passes every check ``aggregate`` makes;
    else it goes to ``round_R/rejected/`` with its reason, and the node is refused."""
    name = f"{replies.who(node, client)}: its upload"
    try:
        ckpt = admission.check_upload(got.upload, name, gl, cfg, client)
        if ckpt.meta.num_examples != got.num_examples:
            raise SupermaskError(f"{name}: its result says {got.num_examples} examples, its file "
                                 f"{ckpt.meta.num_examples}")
    except SupermaskError as exc:
        reason = str(exc).removeprefix(f"{name}: ")
    except Exception as exc:  # a file the format checks missed must still not stop the server
        reason = f"unreadable upload ({type(exc).__name__})"
    else:
        storage.write_atomic(layout.client_path(rnd, client), got.upload, force=True)
        return
    refusal = replies.refuse(node, client, reason)
    admission.quarantine(layout, rnd, client, got.upload, str(refusal))
    raise refusal
