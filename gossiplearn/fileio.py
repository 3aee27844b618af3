"""Durable file writes shared by every layer: a crash leaves the old file or the new one,
never a torn mix. Standard library only, so even the pure layers may use it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def temp_prefix(name: str) -> str:
    """Prefix of the temp files :func:`write_atomically` makes for a file called ``name``."""
    return f".{name}."


def fsync_directory(directory: Path) -> None:
    """Make a rename or link in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, write: Callable[[Path], object], mode: int = 0o600) -> None:
    """Have ``write`` fill a temp file next to ``path``, make it durable, rename it over."""
    fd, temp_name = tempfile.mkstemp(
        prefix=temp_prefix(path.name), suffix=TEMP_SUFFIX, dir=path.parent
    )
    temp = Path(temp_name)
    try:
        os.close(fd)
        write(temp)
        os.chmod(temp, mode)
        with open(temp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
