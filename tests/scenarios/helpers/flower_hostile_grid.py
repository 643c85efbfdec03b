"""Run the real ServerApp (`flower_server.main`) over an in-process grid of real flwr Messages:
clients 0 and 1 honest (the real ClientApp functions), clients 2 and 3 and a fifth node hostile in
the ways issue 22 reproduced. Run with the Flower environment's python:

    python flower_hostile_grid.py CONFIG WORKDIR

Prints one JSON line: {"exit": ..., "traceback": ...}; the ServerApp's status.json is the verdict."""

from __future__ import annotations

import json
import sys
import traceback
from uuid import uuid4

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from supermask_cli.launch import flower_client, flower_server
from supermask_cli.launch import flower_wire as wire

HONEST = {10: 0, 11: 1}
NODES = {10: 0, 11: 1, 12: 2, 13: 3, 14: None}
BIG = 50 * 2**20


class Grid:
    def __init__(self, workdir: str, config: str) -> None:
        self.contexts = {
            node: Context(run_id=1, node_id=node, state=RecordDict(), run_config={"workdir": workdir},
                          node_config={"client-id": client if client is not None else 0,
                                       "work-dir": f"{workdir}/node_{node}"})
            for node, client in NODES.items()
        }
        self.replies: list[Message] = []
        self.kept: dict[int, bytes] = {}  # client 3's round-0 upload, replayed in round 1

    def get_node_ids(self):
        return list(NODES)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            ids.append(msg.metadata.message_id)
            self.replies.append(self.answer(msg))
        return ids

    def pull_messages(self, message_ids):
        wanted = set(message_ids)
        out = [m for m in self.replies if m.metadata.reply_to_message_id in wanted]
        self.replies = [m for m in self.replies if m not in out]
        return out

    def answer(self, msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        ctx = self.contexts[node]
        if msg.metadata.message_type == "query":
            if node == 14:  # a non-integer client id
                return Message(RecordDict({wire.NODE: ConfigRecord({"client-id": "four", "holds": ""})}), reply_to=msg)
            return flower_client.query(msg, ctx)
        reply = flower_client.train(msg, ctx)
        if node in HONEST:
            return reply
        rnd = int(msg.content[wire.SETUP]["round"])
        upload = reply.content[wire.UPLOAD][wire.FILE].numpy().tobytes()
        result = reply.content[wire.RESULT]
        if node == 12 and rnd == 0:  # a train reply without its result record
            return Message(RecordDict({wire.UPLOAD: reply.content[wire.UPLOAD]}), reply_to=msg)
        if node == 12:  # 50 MiB with the upload's valid header in front
            big = np.zeros(BIG, dtype=np.uint8)
            big[: len(upload)] = np.frombuffer(upload, dtype=np.uint8)
            return Message(RecordDict({wire.RESULT: result, wire.UPLOAD: ArrayRecord({wire.FILE: Array(big)})}),
                           reply_to=msg)
        if rnd == 0:  # client 3: the upload as a ConfigRecord, and keep it for a replay
            self.kept[3] = upload
            return Message(RecordDict({wire.RESULT: result, wire.UPLOAD: ConfigRecord({"file": upload})}),
                           reply_to=msg)
        old = self.kept[3]  # client 3 in round 1: its round-0 upload again
        return Message(RecordDict({wire.RESULT: result, wire.UPLOAD: wire.file_record(old)}), reply_to=msg)


def main() -> None:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # what a SuperExec sets
    config, workdir = sys.argv[1:3]
    grid = Grid(workdir, config)
    run_config = {"config": config, "set": "", "workdir": workdir, "round-timeout": 30.0, "connect-timeout": 1.0}
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    code, tb = 0, ""
    try:
        flower_server.main(grid, context)
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        code, tb = 1, traceback.format_exc()
    print(json.dumps({"exit": code, "traceback": tb}))


if __name__ == "__main__":
    main()
