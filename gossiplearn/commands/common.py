"""Helpers shared by the commands: errors as one line, peer arguments."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

from gossiplearn.crypto.identity import IdentityError, public_key_from_peer_id


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``gossiplearn: message`` to stderr and exit with ``code``."""
    typer.echo(f"gossiplearn: {message}", err=True)
    sys.exit(code)


def parse_peer(text: str) -> tuple[str, str | None]:
    """(peer id, bootstrap multiaddr or None) from a peer id or a full multiaddr /.../p2p/ID;
    anything else ends the command with one line and exit code 2."""
    from gossiplearn.peer.config import dial_address_problem
    from gossiplearn.peer.net.host import split_p2p_multiaddr

    if text.startswith("/"):
        problem = dial_address_problem(text)
        if problem:
            fail(problem, 2)
        return split_p2p_multiaddr(text)[1], text
    try:
        public_key_from_peer_id(text)
    except (ValueError, IdentityError) as exc:
        fail(
            f"{text!r} is neither a peer id (12D3KooW...) nor a multiaddr ending in /p2p/ID "
            f"({exc})",
            2,
        )
    return text, None


def dialable(listen: str, peer_id: str) -> str:
    """The full address others dial for a listen multiaddr (0.0.0.0 noted as such)."""
    address = f"{listen}/p2p/{peer_id}"
    if "/ip4/0.0.0.0/" in listen or "/ip6/::/" in listen:
        return f"{address}  (replace the any-address with this machine's IP or name)"
    return address
