"""``gossiplearn keys show DIR``: print the peer id of DIR's identity and the full address
other peers dial (``gossiplearn allow THEIR_DIR ADDRESS``)."""

from __future__ import annotations

from pathlib import Path

import typer

from gossiplearn.commands.common import Command, Group, dialable, fail, peer_directory
from gossiplearn.crypto.identity import IdentityError, load_key_file
from gossiplearn.peer.config import IDENTITY_FILE, ConfigError, load_config

keys_app = typer.Typer(help="Inspect a peer's identity.", no_args_is_help=True, cls=Group)


@keys_app.command("show", cls=Command)
def show(
    directory: Path = typer.Argument(..., help="The peer directory.", metavar="DIR"),
) -> None:
    """Print the peer id (12D3KooW...) and the full address(es) to give other peers."""
    peer_directory(directory)
    try:
        peer_id = load_key_file(directory / IDENTITY_FILE).peer_id
    except IdentityError as exc:
        fail(str(exc))
    try:
        listen = load_config(directory).peer.listen
    except ConfigError as exc:
        fail(str(exc), 2)
    typer.echo(f"peer id:  {peer_id}")
    for address in listen:
        typer.echo(f"address:  {dialable(address, peer_id)}")
