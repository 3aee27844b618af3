"""Resident memory and start-up of idle peer daemons on digits (benchmarks/idle_bench.py).

:func:`idle_figures` starts ``peers`` real daemons (``python -m gossiplearn.cli run DIR``, as
``gossiplearn sim --mode process`` does) on digits admitting each other, with a round interval
no one reaches, so they train once, find their neighbours and then idle. Once every peer's
/status shows its neighbours live, it waits ``idle_s`` more and reads each peer's memory:
``process.rss_bytes`` from /status, and RssAnon / RssFile from /proc/PID/status (file-backed
pages are mostly shared libraries: ~60 MB of libtorch_cpu.so).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from gossiplearn.peer.config import load_config
from gossiplearn.sim.config import SimConfig
from gossiplearn.sim.daemons import _fetch_status, _stop_all, prepare_peers, start_peer

MB = 1 << 20
NEVER_S = 1e6
TIMEOUT_S = 120.0


def proc_memory(pid: int) -> dict[str, int]:
    """RssAnon and RssFile of a process, in bytes (Linux)."""
    figures = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(("RssAnon:", "RssFile:")):
                    name, value, _unit = line.split()
                    figures[name.rstrip(":")] = int(value) * 1024
    except OSError:
        pass
    return figures


def idle_figures(peers: int = 3, idle_s: float = 10.0) -> dict[str, Any]:
    """idle_bench's line; RuntimeError if a peer exits or they are not ready in time."""
    with tempfile.TemporaryDirectory(prefix="gossiplearn-idle-") as work:
        config = SimConfig(peers=peers, dataset="digits", interval_s=NEVER_S, mode="process")
        dirs = prepare_peers(Path(work), config.validate())
        ports = [load_config(d).status.port for d in dirs]
        began = time.monotonic()
        processes = [start_peer(d) for d in dirs]
        startup: list[float | None] = [None] * peers
        try:
            ready_s = None
            while time.monotonic() - began < TIMEOUT_S:
                documents = []
                for i, port in enumerate(ports):
                    if processes[i].poll() is not None:
                        raise RuntimeError(f"peer {i} exited with code {processes[i].returncode}")
                    document = _fetch_status(port)
                    if document is not None and startup[i] is None:
                        startup[i] = time.monotonic() - began
                    documents.append(document)
                live = [
                    d is not None and sum(1 for n in d["neighbours"] if n["live"]) >= peers - 1
                    for d in documents
                ]
                if all(live):
                    ready_s = time.monotonic() - began
                    break
                time.sleep(0.2)
            if ready_s is None:
                raise RuntimeError(f"peers not ready within {TIMEOUT_S:g} s")
            time.sleep(idle_s)
            rss, anon, file = [], [], []
            for process, port in zip(processes, ports, strict=True):
                document = _fetch_status(port)
                if document is None:
                    raise RuntimeError("a peer stopped answering /status")
                rss.append(document["process"]["rss_bytes"])
                split = proc_memory(process.pid)
                anon.append(split.get("RssAnon", 0))
                file.append(split.get("RssFile", 0))
        finally:
            _stop_all(processes)
    starts = [s for s in startup if s is not None]
    return {
        "bench": "idle",
        "dataset": "digits",
        "peers": peers,
        "idle_rss_mb_max": round(max(rss) / MB, 1),
        "idle_rss_mb_median": round(statistics.median(rss) / MB, 1),
        "rss_anon_mb_max": round(max(anon) / MB, 1),
        "rss_file_mb_max": round(max(file) / MB, 1),
        "startup_s_median": round(statistics.median(starts), 2),
        "startup_s_max": round(max(starts), 2),
        "ready_s": round(ready_s, 2),
    }
