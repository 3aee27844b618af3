"""One daemon per peer directory: an exclusive, non-blocking ``flock`` on ``DIR/daemon.lock``.

Two daemons on one directory would run one identity twice and write one checkpoint from two
processes. The lock is held for the daemon's whole run and released by the kernel when the
process ends, however it ends (no stale lock after a crash or kill -9). The file holds the
holder's pid, for the message the second daemon prints.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

LOCK_FILE = "daemon.lock"


class DirectoryLocked(RuntimeError):
    """Another daemon (pid ``holder``, if known) runs on this directory."""

    def __init__(self, directory: Path, holder: int | None) -> None:
        who = f"pid {holder}" if holder else "another process"
        super().__init__(
            f"{directory} is already used by a running gossiplearn daemon ({who}); stop it "
            "first, or give this peer its own directory"
        )
        self.holder = holder


class DirectoryLock:
    """``with DirectoryLock(directory):`` holds the directory's lock or raises DirectoryLocked."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(self.path)
            os.close(fd)
            raise DirectoryLocked(self.path.parent, holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def read_holder(path: Path) -> int | None:
    """The pid written in a lock file, or None."""
    try:
        return int(Path(path).read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None
