"""Helpers shared by the commands: errors as one line, peer arguments, free ports."""

from __future__ import annotations

import socket
import sys
from typing import NoReturn

import typer

from gossiplearn.crypto.identity import IdentityError, public_key_from_peer_id


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``gossiplearn: message`` to stderr and exit with ``code``."""
    typer.echo(f"gossiplearn: {message}", err=True)
    sys.exit(code)


def parse_peer(text: str) -> tuple[str, str | None]:
    """(peer id, bootstrap multiaddr or None) from a peer id or a full multiaddr /.../p2p/ID."""
    from gossiplearn.peer.host import split_p2p_multiaddr

    try:
        if text.startswith("/"):
            _, peer_id = split_p2p_multiaddr(text)
            return peer_id, text
        public_key_from_peer_id(text)
        return text, None
    except (ValueError, IdentityError) as exc:
        raise typer.BadParameter(
            f"{text!r} is neither a peer id (12D3KooW...) nor a multiaddr ending in /p2p/ID ({exc})"
        ) from None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (bind to 0 and let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
