"""``gossiplearn run DIR``: run the peer daemon in the foreground until SIGINT/SIGTERM.

Exit codes: 0 after a stop signal; 1 when the daemon cannot start or run (its directory is in
use, a port is taken, a checkpoint or data cannot be read, an unexpected error); 2 when the
configuration is invalid. A failure is one line on stderr naming the cause and the fix; the
details (a traceback, if any) go to the log file only.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

import typer

from gossiplearn.commands.common import fail, peer_directory
from gossiplearn.peer.config import ConfigError, PeerConfig, load_config

#: Exit code for an invalid configuration (as for invalid command-line arguments).
CONFIG_EXIT = 2


def configure_logging(directory: Path, config: PeerConfig) -> Path:
    """Our messages to stderr and the log file; libp2p's (and the root logger's) to the file
    only, at warning level, so a user sees gossiplearn's lines rather than libp2p's noise.
    Returns the log file's path."""
    level = getattr(logging, config.logging.level.upper())  # validated with the config
    log_file = directory / config.logging.file
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file)
    except OSError as exc:
        fail(
            f"cannot write the log file {log_file} ({exc.strerror or exc}): make it writable, "
            f"or set logging.file in {directory / 'config.toml'}"
        )
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
    # Importing libp2p configures its "libp2p" logger: no handlers and no propagation, so
    # its warnings ("Failed to open TCP stream", "[ADDCONN_FAIL] ...") would reach Python's
    # last-resort handler, stderr. Import it now and give that logger our file.
    import libp2p  # noqa: F401

    libp2p_log = logging.getLogger("libp2p")
    libp2p_log.handlers[:] = [file_handler]
    libp2p_log.setLevel(logging.WARNING)
    return log_file


def _known_error(error: BaseException) -> BaseException | None:
    """The error an operator can act on, inside ``error`` (unwrapping exception groups)."""
    from gossiplearn.crypto.identity import IdentityError
    from gossiplearn.peer.daemon import StartError
    from gossiplearn.peer.dirlock import DirectoryLocked
    from gossiplearn.peer.learning.checkpoint import CheckpointError
    from gossiplearn.peer.learning.data import DataLoaderError
    from gossiplearn.peer.learning.split_model import SplitModelError
    from gossiplearn.peer.learning.trainer import DeviceUnavailable
    from gossiplearn.privacy.dp import PrivacyError

    known = (
        ConfigError,
        IdentityError,
        CheckpointError,
        DataLoaderError,
        SplitModelError,
        StartError,
        DirectoryLocked,
        DeviceUnavailable,
        PrivacyError,
    )
    if isinstance(error, known):
        return error
    for inner in getattr(error, "exceptions", ()):
        found = _known_error(inner)
        if found is not None:
            return found
    return None


def _interrupted(error: BaseException) -> bool:
    if isinstance(error, KeyboardInterrupt):
        return True
    inner = getattr(error, "exceptions", ())
    return bool(inner) and all(_interrupted(e) for e in inner)


def _exit(code: int) -> NoReturn:
    # Everything is on disk (checkpoint fsynced, host closed). Interpreter teardown of torch
    # and friends takes 1-3 s here and does nothing useful, so skip it: a stop signal must
    # end the process within 5 s.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(
    directory: Path = typer.Argument(
        ..., help="The peer directory (from `gossiplearn init`).", metavar="DIR"
    ),
) -> None:
    """Run the peer daemon in the foreground until SIGINT/SIGTERM (then exit 0)."""
    peer_directory(directory)
    try:
        config = load_config(directory)
    except ConfigError as exc:
        fail(str(exc), CONFIG_EXIT)
    log_file = configure_logging(directory, config)
    # Tracebacks go to the file only: the root logger has only the file handler.
    file_log = logging.getLogger()

    import trio

    from gossiplearn.peer.daemon import Daemon
    from gossiplearn.peer.heap import keep_freed_memory

    if config.peer.keep_freed_memory:
        keep_freed_memory()

    try:
        peer = Daemon(directory, config)
        trio.run(peer.run)
    except BaseException as error:  # noqa: BLE001 - every failure ends as one line
        if _interrupted(error):
            _exit(130)  # a signal during start-up, before the daemon listens for it
        known = _known_error(error)
        if known is not None:
            file_log.error("the daemon could not run: %s", known, exc_info=error)
            typer.echo(f"gossiplearn: {known}", err=True)
            _exit(CONFIG_EXIT if isinstance(known, ConfigError) else 1)
        file_log.error("the daemon stopped on an unexpected error", exc_info=error)
        summary = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        typer.echo(
            f"gossiplearn: the daemon stopped on an unexpected error ({summary}); the details "
            f"are in {log_file}",
            err=True,
        )
        _exit(1)
    _exit(0)
