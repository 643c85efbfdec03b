"""Which SuperNode is which client: bound by the operator, not by what a node says.

With SuperNode authentication (``flower-superlink --enable-supernode-auth``) only nodes whose
public key was registered (``flwr supernode register KEY``) can connect, and each registered key
gets its node id. The operator's clients file (run config ``clients-file``) maps those node ids to
client ids, as JSON: ``{"nodes": {"<node id>": <client id>, ...}}``. A node not in it is refused, and
so is one whose self-declared ``client-id`` differs from the one the file binds it to. Without the
file, a node's self-declared id is used, with a warning: then any node can claim any id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .. import storage
from ..errors import SupermaskError
from .flower_replies import Refused, refuse

MAX_FILE_BYTES = 1 << 24

SELF_DECLARED_WARNING = (
    "supermask: warning: no clients-file: client ids are what each SuperNode says about itself, so any node "
    "can claim any id (run the SuperLink with --enable-supernode-auth and pass clients-file; see README)"
)


@dataclass(frozen=True)
class Identities:
    path: str
    clients: dict[int, int]  # node id -> client id

    def bind(self, node: int, declared: int) -> int:
        """The client id of ``node``: the file's; refused when the node is not in it or says otherwise."""
        if node not in self.clients:
            raise refuse(node, None, f"not in the clients file {self.path} (an unregistered node)")
        bound = self.clients[node]
        if declared != bound:
            raise refuse(node, None, f"says client-id={declared}, but the clients file {self.path} binds it to "
                                     f"client {bound}")
        return bound


def load_clients_file(path: str, num_clients: int) -> Identities:
    """Read and check the operator's clients file; one line naming the file and the entry on error."""
    try:
        raw = json.loads(storage.read_bytes(path, MAX_FILE_BYTES, what="clients file"))
    except SupermaskError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise SupermaskError(f"clients file {path}: not JSON ({type(exc).__name__})") from None
    if not isinstance(raw, dict) or set(raw) != {"nodes"} or not isinstance(raw["nodes"], dict):
        raise SupermaskError(f'clients file {path}: expected {{"nodes": {{"<node id>": <client id>, ...}}}}')
    clients: dict[int, int] = {}
    owner: dict[int, int] = {}
    for key, client in raw["nodes"].items():
        if not key.isdigit():
            raise SupermaskError(f"clients file {path}: node id {key!r} is not a non-negative integer")
        if isinstance(client, bool) or not isinstance(client, int) or not 0 <= client < num_clients:
            raise SupermaskError(f"clients file {path}: node {key}: client id {client!r} is outside "
                                 f"0..{num_clients - 1}")
        if client in owner:
            raise SupermaskError(f"clients file {path}: client {client} is bound to nodes {owner[client]} and {key}")
        owner[client] = int(key)
        clients[int(key)] = client
    return Identities(path=path, clients=clients)


__all__ = ["Identities", "Refused", "SELF_DECLARED_WARNING", "load_clients_file"]
