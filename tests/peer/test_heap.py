"""peer.heap: with keep_freed_memory, a buffer freed and allocated again is not page-faulted
in afresh (what a round does with its frames, shards and average)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# In a fresh interpreter: allocate and write 64 MiB, free it, do it again, and count the
# minor page faults of the second time (the kernel's zero-fill of fresh pages).
_PROBE = """
import json, resource, sys
import numpy as np
from gossiplearn.peer.heap import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
def touch():
    buffer = np.empty(64 << 20, np.uint8)
    buffer.fill(1)
    del buffer
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(json.dumps({"took": took, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(mode: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_a_buffer_allocated_again_is_not_faulted_in_afresh() -> None:
    kept, default = _probe("keep"), _probe("default")
    assert kept["took"] is True
    pages = (64 << 20) // 4096
    # Kept: the second buffer is the first one's memory, already mapped.
    assert kept["faults"] < pages // 100, kept
    # The control (malloc as it comes): the buffer faulted in again, page by page (huge
    # pages of 2 MiB where numpy asks for them: 544 faults here, 16,384 without).
    assert default["faults"] > 4 * kept["faults"] + 16, (default, kept)
