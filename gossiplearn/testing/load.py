"""A busy machine on demand: processes that spin, as ``stress --cpu N`` does.

Benchmarks compare gossiplearn with an anchor (hivemind, Flower) on a quiet machine and beside
such hogs (``--load N``), alternated in one run, so the ratio says how each copes with a
machine it does not have to itself. Each hog is a separate interpreter running ``while True:
pass``: N hogs keep N run-queue entries busy, a load average of at least N.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

_SPIN = "while True: pass"


@contextlib.contextmanager
def cpu_hogs(count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run ``count`` spinning processes for the duration of the block (none when 0).

    They are killed on exit, the block's exceptions included; a hog that died early (killed
    from outside) is simply not waited for twice.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    hogs = [
        subprocess.Popen(
            [sys.executable, "-c", _SPIN],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    try:
        yield hogs
    finally:
        for hog in hogs:
            with contextlib.suppress(ProcessLookupError):
                hog.kill()
        for hog in hogs:
            hog.wait()


def load_average() -> float:
    """The machine's one-minute load average."""
    return round(os.getloadavg()[0], 2)
