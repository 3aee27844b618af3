"""``gossiplearn run DIR``: run the peer daemon in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import typer

from gossiplearn.commands.common import fail
from gossiplearn.peer.config import ConfigError, PeerConfig, load_config


def configure_logging(directory: Path, config: PeerConfig) -> None:
    """Our messages to stderr and the log file; libp2p's (and the root logger's) to the file
    only, at warning level, so a user sees gossiplearn's lines rather than libp2p's noise."""
    level = getattr(logging, config.logging.level.upper(), None)
    if not isinstance(level, int):
        fail(
            f"logging.level must be debug, info, warning or error, got {config.logging.level!r}", 2
        )
    log_file = directory / config.logging.file
    log_file.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(log_file)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))

    ours = logging.getLogger("gossiplearn")
    ours.setLevel(level)
    ours.handlers[:] = [console, file_handler]
    ours.propagate = False

    root = logging.getLogger()
    root.handlers[:] = [file_handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("libp2p").setLevel(logging.WARNING)


def run(
    directory: Path = typer.Argument(..., help="The peer directory (from `gossiplearn init`)."),
) -> None:
    """Run the peer daemon in the foreground until SIGINT/SIGTERM (then exit 0)."""
    try:
        config = load_config(directory)
    except ConfigError as exc:
        fail(str(exc))
    configure_logging(directory, config)

    import trio

    from gossiplearn.crypto.identity import IdentityError
    from gossiplearn.peer.checkpoint import CheckpointError
    from gossiplearn.peer.daemon import Peer
    from gossiplearn.peer.data import DataLoaderError

    try:
        peer = Peer(directory, config)
        trio.run(peer.run)
    except (IdentityError, CheckpointError, DataLoaderError, ConfigError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot start the peer: {exc}")
    # Everything is on disk (checkpoint fsynced, host closed). Interpreter teardown of torch
    # and friends takes 1-3 s here and does nothing useful, so skip it: a stop signal must
    # end the process within 5 s.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
