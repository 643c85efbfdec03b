"""``supermask secagg keys|shares|unmask``: a client's secure-aggregation steps of one round (DESIGN §9)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import ConfigOpt, RoundOpt, SecretsOpt, SetOpt, out, read_config, user_errors

app = typer.Typer(no_args_is_help=True, help="Secure aggregation: a client's key, share and unmask steps of a round.")

ClientOpt = Annotated[int, typer.Option("--client", "-i", help="Client id, 0..num_clients-1.")]


@app.command()
@user_errors
def keys(
    config: ConfigOpt, client: ClientOpt, set_: SetOpt = None, rnd: RoundOpt = None, secrets: SecretsOpt = None,
    identity_key: Annotated[Optional[Path], typer.Option("--identity-key", help="This client's Ed25519 identity key (PEM) to sign its keys.")] = None,
    identities: Annotated[
        Optional[Path], typer.Option("--identities", help="Directory of the peers' registered identity public keys (client_III.pem).")
    ] = None,
) -> None:
    """Publish this round's public keys (the private keys and self-mask seed stay in --secrets).

    Example: `supermask secagg keys --config configs/glue_sst2.yaml --client 3`
    """
    from ..steps import secure

    path = secure.publish_keys(read_config(config, set_), client, rnd, secrets, identity_key=identity_key, identities=identities)
    out.print(f"wrote {path}")


@app.command()
@user_errors
def shares(
    config: ConfigOpt, client: ClientOpt, set_: SetOpt = None, rnd: RoundOpt = None, secrets: SecretsOpt = None,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for every participant's keys.")] = 0.0,
) -> None:
    """Seal this client's Shamir shares for every participant whose keys are in.

    Example: `supermask secagg shares --config configs/glue_sst2.yaml --client 3 --wait 600`
    """
    from ..steps import secure

    out.print(f"wrote {secure.share_keys(read_config(config, set_), client, rnd, secrets, wait=wait)}")


@app.command()
@user_errors
def unmask(config: ConfigOpt, client: ClientOpt, set_: SetOpt = None, rnd: RoundOpt = None, secrets: SecretsOpt = None) -> None:
    """Answer the server's survivor list: one kind of share per peer, never both.

    Example: `supermask secagg unmask --config configs/glue_sst2.yaml --client 3`
    """
    from ..steps import secure

    out.print(f"wrote {secure.reveal(read_config(config, set_), client, rnd, secrets)}")
