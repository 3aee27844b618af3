"""``gossiplearn sim``: the local multi-peer simulation (arrives with the simulation issue)."""

from __future__ import annotations

import typer


def sim() -> None:
    """Run a local multi-peer simulation (not yet available)."""
    typer.echo(
        "gossiplearn sim: not yet available. The crypto, wire format, secure round and peer "
        "daemon are in place; the simulation launcher comes next. `make test` checks the install."
    )
