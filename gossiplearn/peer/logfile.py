"""A peer's log file for peers that run inside someone else's process (``gossiplearn.Peer``,
``open_peer``, the simulation's inproc mode): gossiplearn's and libp2p's records go to the file
and nowhere else while it is attached, so a user's stderr, or a progress bar, gets none of
them ("INFO:gossiplearn.peer:...", libp2p's "Failed to open TCP stream").

``gossiplearn run`` configures logging for its whole process instead (commands/run.py).

Attaching stops the "gossiplearn" logger's propagation to the root logger (restored when the
last attached file is detached): a program that wants our records elsewhere too adds its own
handler to ``logging.getLogger("gossiplearn")``. libp2p's logger never propagates (libp2p sets
it so at import); without a handler its warnings would reach Python's last-resort handler,
stderr. Only its warnings and errors are written.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

OURS = "gossiplearn"
LIBP2P = "libp2p"

_lock = threading.Lock()
_attached: list[logging.Handler] = []
_propagate_before: bool = True


def _libp2p_below_warning(record: logging.LogRecord) -> bool:
    return not (record.name.startswith(LIBP2P) and record.levelno < logging.WARNING)


def attach(path: Path, level: str = "info") -> logging.Handler | None:
    """Write gossiplearn's records at ``level`` and above, and libp2p's warnings, to ``path``
    (created with its directory). None if the file cannot be opened (then nothing changes:
    the caller's records go where they went before)."""
    global _propagate_before
    import libp2p  # noqa: F401 - its import resets its logger's handlers: before ours

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(level.upper())
    handler.addFilter(_libp2p_below_warning)
    ours = logging.getLogger(OURS)
    with _lock:
        if not _attached:
            _propagate_before = ours.propagate
        _attached.append(handler)
        ours.propagate = False
        if ours.level == logging.NOTSET:  # unless the program set it: the file's level
            ours.setLevel(level.upper())
        ours.addHandler(handler)
        logging.getLogger(LIBP2P).addHandler(handler)
    return handler


def detach(handler: logging.Handler | None) -> None:
    """Undo :func:`attach` (closing the file); the last one restores propagation."""
    if handler is None:
        return
    ours = logging.getLogger(OURS)
    with _lock:
        ours.removeHandler(handler)
        logging.getLogger(LIBP2P).removeHandler(handler)
        if handler in _attached:
            _attached.remove(handler)
        if not _attached:
            ours.propagate = _propagate_before
    handler.close()
