"""A scripted Flower link for the ServerApp's round logic (launch.flower_rounds), no flwr needed:
nodes 10 and 11 are honest clients 0 and 1, node 12 (client 2) answers through a test's hostile
function. Honest replies carry uploads trained once per module (:func:`build_material`)."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import yaml
from conftest import tiny_config_dict

from supermask_cli import checkpoint, steps
from supermask_cli.config import load_config
from supermask_cli.launch import flower_rounds as rounds
from supermask_cli.launch import flower_wire as wire
from supermask_cli.launch.flower_wire import ArrayView, Outgoing, Record, Reply
from supermask_cli.layout import Layout

HONEST = {10: 0, 11: 1}
HOSTILE = 12  # client 2's node
SETTINGS = rounds.Settings(config="", overrides=[], workdir="", round_timeout=0.5, connect_timeout=0.3)


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def array_view(data: bytes) -> ArrayView:
    """What flwr's Array(np.frombuffer(data, uint8)) carries."""
    return ArrayView(dtype="uint8", shape=(len(data),), stype="numpy.ndarray", data=npy(np.frombuffer(data, np.uint8)))


@dataclasses.dataclass
class Material:
    config: Path
    base: Path  # a run dir with round 0 done and round 1's global and metrics
    uploads: dict[int, dict[int, bytes]]  # round -> client -> honest upload


def build_material(home: Path, tiny_model: Path, tiny_data) -> Material:
    """Round 0 done and round 1's global evaluated; every client's honest upload of rounds 0 and 1."""
    raw = tiny_config_dict(home / "base", tiny_model, tiny_data, "threshold")
    raw["federation"].update(num_clients=3, rounds=2, min_clients=2)
    raw["train"]["max_steps"] = 2
    config = home / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    cfg = load_config(config)
    layout = Layout(cfg.run_dir)
    steps.init(cfg)
    uploads: dict[int, dict[int, bytes]] = {}
    for rnd in (0, 1):
        if rnd:
            steps.aggregate(cfg, rnd=0)
        steps.evaluate(cfg, rnd=rnd)
        steps.write_participants(layout, cfg, rnd)
        for c in range(3):
            steps.train_client(cfg, c, rnd=rnd)
        uploads[rnd] = {c: Path(layout.client_path(rnd, c)).read_bytes() for c in range(3)}
    shutil.rmtree(layout.clients_dir(1))
    Path(layout.participants_path(1)).unlink()
    return Material(config=config, base=Path(cfg.run_dir), uploads=uploads)


def query_reply(node: int, mid: str, client) -> Reply:
    return Reply(node=node, reply_to=mid, kind=wire.QUERY, group="", error=None,
                 records={wire.NODE: Record(wire.CONFIG, {"client-id": client, "holds": ""})})


def train_reply(node: int, mid: str, m: Outgoing, data: bytes) -> Reply:
    meta = checkpoint.parse_meta(checkpoint.parse_header(data, "x")[0], "x")
    result = {"status": wire.OK, "holds": m.setup["digest"], "round": m.setup["round"],
              "num_examples": meta.num_examples, "steps": 2, "replayed": False, "mean_loss": 0.69, "seconds": 0.5}
    return Reply(node=node, reply_to=mid, kind=wire.TRAIN, group=m.group, error=None,
                 records={wire.RESULT: Record(wire.CONFIG, result), wire.UPLOAD: Record(wire.ARRAY, {wire.FILE: array_view(data)})})


class ScriptedLink:
    """A grid whose nodes answer at once; replies are delivered newest first, and node 12 may join late."""

    def __init__(self, material: Material, hostile: Callable, *, late: bool = False, claim: int = 2):
        self.material, self.hostile, self.late, self.claim = material, hostile, late, claim
        self.sent: dict[str, Outgoing] = {}
        self.inbox: list[Reply] = []
        self.deliveries = 0

    def node_ids(self):
        return {*HONEST, *([HOSTILE] if not self.late or self.deliveries else [])}

    def honest(self, node: int, mid: str, m: Outgoing, client: int) -> Reply:
        if m.kind == wire.QUERY:
            return query_reply(node, mid, client)
        return train_reply(node, mid, m, self.material.uploads[m.setup["round"]][client])

    def send(self, messages: list[Outgoing]) -> list[str]:
        ids = []
        for m in messages:
            mid = f"m{len(self.sent)}"
            self.sent[mid] = m
            ids.append(mid)
            if m.node in HONEST:
                self.inbox.append(self.honest(m.node, mid, m, HONEST[m.node]))
            else:
                self.inbox.extend(self.hostile(self, self.honest(m.node, mid, m, self.claim), m))
        return ids

    def receive(self, message_ids: list[str]) -> list[Reply]:
        out, self.inbox = self.inbox[::-1], []
        self.deliveries += 1
        return out


def serve(material: Material, tmp_path: Path, link: ScriptedLink,
          settings: rounds.Settings = SETTINGS) -> tuple[int, dict, Path]:
    run_dir = tmp_path / "run"
    shutil.copytree(material.base, run_dir)
    cfg = load_config(material.config, [f"run_dir={run_dir}"])
    code = rounds.run(link, cfg, settings)
    return code, json.loads((run_dir / "flower" / "status.json").read_text()), run_dir


def aggregated(run_dir: Path) -> list[int]:
    meta = checkpoint.read_meta(str(run_dir / "round_002" / "global.safetensors"))
    return sorted(c.client for c in meta.aggregation.clients)
