"""Run the Flower ServerApp's rounds against the ClientApp in one process, through a Grid that
hands each message to the node's ClientApp function (no SuperLink, no network). Run with the
Flower environment's python (tests/scenarios/test_flower_policy.py does):

    python flower_loopback.py SPECS.json    # prints one JSON line: the list of results

SPECS: a list of {"config": path, "work": dir, "policies": {"<client>": path}, "action": "serve" |
"repeat", "repeat": N}, run in order (one process: Flower and torch are imported once). ``serve`` runs every round (``flower_rounds.serve``); ``repeat`` sends round 0's
work to client 0 N times and reports each upload's SHA-256.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
import uuid
from pathlib import Path

from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from supermask_cli import steps
from supermask_cli.config import load_config
from supermask_cli.errors import SupermaskError
from supermask_cli.launch import flower_client, flower_rounds, flower_server
from supermask_cli.layout import Layout


class LoopGrid:
    """The few Grid calls the ServerApp makes, answered by calling the ClientApp directly."""

    def __init__(self, contexts: dict[int, Context]) -> None:
        self.contexts = contexts
        self.replies: dict[str, object] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages) -> list[str]:
        ids = []
        for message in messages:
            mid = uuid.uuid4().hex
            message.metadata.__dict__["_message_id"] = mid
            handler = flower_client.train if message.metadata.message_type == "train" else flower_client.query
            self.replies[mid] = handler(message, self.contexts[message.metadata.dst_node_id])
            ids.append(mid)
        return ids

    def pull_messages(self, ids) -> list:
        return [self.replies.pop(mid) for mid in list(ids) if mid in self.replies]


def main(specs_path: str) -> None:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    print(json.dumps([run(spec) for spec in json.loads(Path(specs_path).read_text())]))


def run(spec: dict) -> dict:
    cfg = load_config(spec["config"])
    contexts = {}
    for client in range(cfg.federation.num_clients):
        node = {"client-id": client, "work-dir": str(Path(spec["work"]) / f"client_{client}")}
        if str(client) in spec.get("policies", {}):
            node["privacy-policy"] = spec["policies"][str(client)]
        contexts[100 + client] = Context(run_id=1, node_id=100 + client, node_config=node, state=RecordDict(),
                                         run_config={})
    grid = LoopGrid(contexts)
    link = flower_server.FlowerLink(grid)
    out: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            if spec["action"] == "serve":
                settings = flower_rounds.Settings(spec["config"], [], "", 600.0, 5.0)
                flower_rounds.serve(link, cfg, settings, flower_rounds.Journal())
            else:
                layout = Layout(cfg.run_dir)
                steps.init(cfg)
                nodes = flower_rounds.discover(link, cfg.federation.num_clients, 5.0, flower_rounds.Journal())
                out["uploads"], out["failures"] = [], []
                for _ in range(spec["repeat"]):
                    failures, _ = flower_rounds.train_round(link, cfg, layout, 0, [0], nodes, 600.0,
                                                            flower_rounds.Journal())
                    out["failures"].append(failures)
                    path = Path(layout.client_path(0, 0))
                    out["uploads"].append(hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None)
        except SupermaskError as exc:
            out["error"] = str(exc)
    out["stdout"] = printed.getvalue()
    return out


if __name__ == "__main__":
    main(sys.argv[1])
