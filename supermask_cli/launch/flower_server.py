"""The Flower ServerApp: a supermask run's rounds over SuperNodes, one client per SuperNode.

The rounds themselves live in :mod:`.flower_rounds` (flwr-free); this module is the glue: the
run config, and :class:`FlowerLink`, which turns the grid's messages into the plain
:class:`~.flower_wire.Reply` values every check works on. Run config (``flwr run --run-config``):
``config`` (YAML path), ``set`` (``key=value`` overrides separated by ``;``), ``workdir`` (where
relative paths resolve; "" = where the ServerApp starts), ``round-timeout`` and
``connect-timeout`` (seconds), ``clients-file`` (the operator's node id -> client id file,
:mod:`.flower_identity`; "" = self-declared ids, with a warning).
"""

from __future__ import annotations

import os
from typing import Iterable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ..config import load_config
from . import flower_rounds as rounds
from . import flower_wire as wire
from .flower_rounds import Settings
from .flower_wire import Outgoing, Reply

app = ServerApp()


class FlowerLink:
    """The grid as a :class:`~.flower_rounds.Link`."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def node_ids(self) -> Iterable[int]:
        return set(self.grid.get_node_ids())

    def send(self, messages: list[Outgoing]) -> list[str]:
        return [str(i) for i in self.grid.push_messages([wire.outgoing_message(m) for m in messages])]

    def receive(self, message_ids: list[str]) -> list[Reply]:
        out = []
        for message in self.grid.pull_messages(message_ids):
            try:
                out.append(wire.reply_from_message(message))
            except Exception as exc:  # a message Flower delivered but that is not shaped like one
                meta = getattr(message, "metadata", None)
                out.append(Reply(node=int(getattr(meta, "src_node_id", -1) or -1),
                                 reply_to=str(getattr(meta, "reply_to_message_id", "")), kind="", group="",
                                 error=f"an unreadable message ({type(exc).__name__})"))
        return out


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = Settings.from_run_config(context.run_config)
    if settings.workdir:
        os.chdir(settings.workdir)
    cfg = load_config(settings.config, settings.overrides)
    if rounds.run(FlowerLink(grid), cfg, settings) != 0:
        raise SystemExit(2)
