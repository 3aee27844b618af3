"""``gossiplearn keys show DIR``: print the peer id of DIR's identity."""

from __future__ import annotations

from pathlib import Path

import typer

from gossiplearn.commands.common import fail
from gossiplearn.crypto.identity import IdentityError, load_key_file
from gossiplearn.peer.config import IDENTITY_FILE

keys_app = typer.Typer(help="Inspect a peer's identity.", no_args_is_help=True)


@keys_app.command("show")
def show(directory: Path = typer.Argument(..., help="The peer directory.")) -> None:
    """Print the peer id (12D3KooW...)."""
    try:
        typer.echo(load_key_file(directory / IDENTITY_FILE).peer_id)
    except IdentityError as exc:
        fail(str(exc))
