"""Resident memory and start-up of idle peer daemons on digits.

The scenario is gossiplearn/testing/scenarios/idle.py: --peers real daemons on digits that
train once, find their neighbours and idle; --idle-s after every peer sees its neighbours
live, each peer's memory is read. Prints one JSON line: bench, dataset, peers,
idle_rss_mb_max and idle_rss_mb_median (``process.rss_bytes`` from /status), rss_anon_mb_max
and rss_file_mb_max (anonymous and file-backed memory, from /proc/PID/status),
startup_s_median and startup_s_max (from the process's start until its /status answers:
imports, model and data, first training, host up), ready_s (until every peer sees its
neighbours live). Exits 1 if a peer exits or they are not ready within 120 s.

Usage: python benchmarks/idle_bench.py [--peers 3] [--idle-s 10]
"""

from __future__ import annotations

import argparse
import json
import sys

from gossiplearn.testing.scenarios.idle import idle_figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=3)
    parser.add_argument("--idle-s", type=float, default=10.0)
    args = parser.parse_args()
    try:
        print(json.dumps(idle_figures(args.peers, args.idle_s)), flush=True)
    except RuntimeError as exc:
        print(f"idle_bench: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
