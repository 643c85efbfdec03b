"""Send N random bytes to every SuperNode as a uint8 Array; the node replies with their SHA-256."""

import hashlib
import json
import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

server = ServerApp()
client = ClientApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    sizes = [int(s) for s in str(context.run_config["sizes"]).split(",")]
    nodes = []
    while not nodes:
        nodes = sorted(grid.get_node_ids())
        time.sleep(0.5)
    rows = []
    for size in sizes:
        data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
        digest = hashlib.sha256(data.tobytes()).hexdigest()
        for rep in range(int(context.run_config["repeats"])):
            start = time.perf_counter()
            msgs = [Message(RecordDict({"g": ArrayRecord({"file": Array(data)})}), dst_node_id=n, message_type="train")
                    for n in nodes]
            waiting = set(grid.push_messages(msgs))
            replies = []
            while waiting:  # poll often: send_and_receive sleeps 3 s between polls
                got = list(grid.pull_messages(list(waiting)))
                waiting -= {r.metadata.reply_to_message_id for r in got}
                replies += got
                time.sleep(0.05)
            seconds = time.perf_counter() - start
            ok = all(not r.has_error() and r.content["r"]["digest"] == digest for r in replies)
            rows.append({"bytes": size, "repeat": rep, "nodes": len(nodes), "seconds": seconds, "ok": ok})
            print(json.dumps(rows[-1]), flush=True)
    with open(str(context.run_config["out"]), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))


@client.train()
def train(msg: Message, context: Context) -> Message:
    data = msg.content["g"]["file"].numpy().tobytes()
    return Message(RecordDict({"r": ConfigRecord({"digest": hashlib.sha256(data).hexdigest()})}), reply_to=msg)
