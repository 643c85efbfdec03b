"""The Flower ClientApp: one supermask client per SuperNode, trained on the node's own data.

Node config (``flower-supernode --node-config``): ``client-id`` (required), ``data-file`` (this
node's training file, ``data.client_train_file`` semantics; default: the config's data) and
``work-dir`` (where the node keeps the global it holds and its upload; default: a directory under
the system's temp dir) and ``privacy-policy`` (this node's privacy policy, ``train-client
--privacy-policy`` semantics: the server's ``privacy`` section is checked against it, and the
node's ledger is the policy's ``ledger``, by default ``<work-dir>/ledger``). Only the upload
leaves the node; a request the policy refuses gets a ``refused`` reply naming the reason.
"""

from __future__ import annotations

import os
import tempfile

import yaml
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from .. import checkpoint, steps, storage, transport
from ..config import Config, config_from_dict
from ..errors import SupermaskError
from ..privacy.policy import ClientPolicy, PolicyRefusal, load_policy
from . import flower_wire as wire

app = ClientApp()


def client_id(context: Context) -> int:
    value = context.node_config.get("client-id")
    if value is None:
        raise SupermaskError("this SuperNode has no client-id; start it with --node-config 'client-id=N'")
    return int(value)


def node_dir(context: Context) -> str:
    path = str(context.node_config.get("work-dir") or "") or os.path.join(
        tempfile.gettempdir(), f"supermask-node-{client_id(context)}"
    )
    os.makedirs(path, exist_ok=True)
    return path


def node_policy(context: Context) -> ClientPolicy | None:
    """The node's own privacy policy (node config ``privacy-policy``), its ledger in the work dir by default."""
    path = str(context.node_config.get("privacy-policy") or "")
    if not path:
        return None
    return load_policy(path).with_default_ledger(os.path.join(node_dir(context), "ledger"))


def held_global(context: Context) -> str:
    return os.path.join(node_dir(context), "global.safetensors")


def node_config(text: str, context: Context) -> Config:
    """The server's config with this node's local choices: its data file."""
    raw = yaml.safe_load(text)
    data_file = context.node_config.get("data-file")
    if data_file:
        raw.setdefault("data", {})["client_train_file"] = str(data_file)
    return config_from_dict(raw, "the config sent by the ServerApp")


def _chdir(context: Context) -> None:
    workdir = str(context.run_config.get("workdir", ""))
    if workdir and os.path.isdir(workdir):
        os.chdir(workdir)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Which client this node is, and which global it holds (so the server can send a delta)."""
    path = held_global(context)
    holds = checkpoint.file_digest(open(path, "rb").read()) if os.path.exists(path) else ""
    return Message(RecordDict({wire.NODE: ConfigRecord({"client-id": client_id(context), "holds": holds})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Rebuild the round's global (full file or delta), train, and send back the upload."""
    _chdir(context)
    client = client_id(context)
    setup = msg.content[wire.SETUP]
    if int(setup["client"]) != client:
        raise SupermaskError(f"the server sent client {setup['client']}'s work to the node of client {client}")
    cfg = node_config(str(setup["config"]), context)
    policy = node_policy(context)
    rnd = int(setup["round"])
    received = wire.record_bytes(msg.content[wire.GLOBAL], "the global")
    path = held_global(context)
    data = transport.receive(cfg, path, received, is_delta=bool(setup["delta"]), digest=str(setup["digest"]))
    if data is None:
        return _reply(msg, wire.NEED_FULL, "", rnd)
    storage.write_atomic(path, data, force=True)
    out = os.path.join(node_dir(context), f"upload_round_{rnd:03d}.safetensors")
    try:
        result = steps.train_client(cfg, client, global_path=path, out=out, force=True, policy=policy)
    except PolicyRefusal as exc:
        return _reply(msg, wire.REFUSED, str(setup["digest"]), rnd, numbers={"reason": str(exc)})
    upload = open(out, "rb").read()
    os.remove(out)
    return _reply(msg, wire.OK, str(setup["digest"]), rnd, upload, reported(cfg, result))


def reported(cfg: Config, result: steps.ClientResult) -> dict:
    """What the node tells the server besides its upload: with privacy on, only what is public
    (example count, steps); a training loss is a statistic of the data that no noise covers."""
    numbers = {"num_examples": result.num_examples, "steps": result.steps, "replayed": result.replayed}
    if cfg.privacy.mode == "none":
        numbers.update({"mean_loss": result.mean_loss, "seconds": result.seconds})
    return numbers


def _reply(msg: Message, status: str, holds: str, rnd: int, upload: bytes = b"", numbers: dict | None = None) -> Message:
    content = RecordDict(
        {
            wire.RESULT: ConfigRecord({"status": status, "holds": holds, "round": rnd, **(numbers or {})}),
            wire.UPLOAD: wire.file_record(upload),
        }
    )
    return Message(content, reply_to=msg)
