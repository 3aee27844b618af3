"""``gossiplearn allow DIR PEER...``: admit peers (a multiaddr also becomes a bootstrap address)."""

from __future__ import annotations

from pathlib import Path

import typer

from gossiplearn.commands.common import fail, parse_peer, peer_directory
from gossiplearn.crypto.identity import IdentityError, load_key_file
from gossiplearn.peer.config import IDENTITY_FILE, ConfigError, load_config, save_config


def allow(
    directory: Path = typer.Argument(..., help="The peer directory.", metavar="DIR"),
    peers: list[str] = typer.Argument(
        ..., metavar="PEER", help="Peer ids, or full multiaddrs ending in /p2p/ID."
    ),
) -> None:
    """Admit PEERs to DIR's network; restart the daemon for it to take effect."""
    peer_directory(directory)
    try:
        config = load_config(directory)
    except ConfigError as exc:
        fail(str(exc), 2)
    try:
        own = load_key_file(directory / IDENTITY_FILE).peer_id
    except IdentityError as exc:
        fail(str(exc))
    added, bootstraps = [], []
    for text in peers:
        peer_id, address = parse_peer(text)
        if peer_id == own:
            fail(
                f"{peer_id} is this peer's own id ({directory / IDENTITY_FILE}); give the "
                "other peer's id or address (`gossiplearn keys show THEIR_DIR` prints it)",
                2,
            )
        if peer_id not in config.peer.allow:
            config.peer.allow.append(peer_id)
            added.append(peer_id)
        if address and address not in config.peer.bootstrap:
            config.peer.bootstrap.append(address)
            bootstraps.append(address)
    try:
        save_config(directory, config)
    except OSError as exc:
        fail(
            f"cannot write {directory / 'config.toml'} ({exc.strerror or exc}); make {directory} "
            "writable by this user (the config is replaced by a new file in it), then run this "
            "again"
        )
    for peer_id in added:
        typer.echo(f"admitted  {peer_id}")
    for address in bootstraps:
        typer.echo(f"bootstrap {address}")
    if not added and not bootstraps:
        typer.echo("nothing new: every peer was already admitted")
    else:
        typer.echo(f"restart the daemon (`gossiplearn run {directory}`) for this to take effect")
