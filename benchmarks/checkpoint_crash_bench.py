"""Crash-safe checkpoints: kill -9 a process while it saves, the checkpoint is the old or the new.

The scenario (gossiplearn/testing/scenarios/checkpoint_crash.py, whose docstring gives the kill
schedule and the checks): ``--trials`` children save checkpoints of a seeded MLP
(``--input-dim``, ``--hidden``) in a loop into one directory and are killed with SIGKILL after
seeded random delays (``--seed``); after each kill the checkpoint must load, holding the last
logged round (old) or the one in flight (new).

Prints one JSON line: trials, loaded_ok (= old + new), old, new, none, errors (failed trials),
killed_mid_write (kills that left a temp model file: the kill landed between the temp file's
creation and the rename), model_bytes, seconds. Failed trials are listed on stderr. Exits 1
if any trial failed.

Usage: python benchmarks/checkpoint_crash_bench.py [--trials 100] [--seed 0] [--input-dim 784]
       [--hidden 1024,1024] [--dir DIR (its filesystem is the one tested; default a temp dir)]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from gossiplearn.testing.scenarios.checkpoint_crash import run_trials


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    parser.add_argument("--input-dim", type=int, default=784)
    parser.add_argument("--hidden", default="1024,1024", help="hidden layer widths")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temp dir)")
    args = parser.parse_args()
    hidden = tuple(int(width) for width in args.hidden.split(","))
    with tempfile.TemporaryDirectory(dir=args.dir) as work_dir:
        report = run_trials(Path(work_dir), args.trials, args.seed, args.input_dim, hidden)
    for failure in report.failures:
        print(failure, file=sys.stderr)
    line = {
        "bench": "checkpoint_crash",
        "trials": report.trials,
        "loaded_ok": report.loaded_ok,
        "old": report.old,
        "new": report.new,
        "none": report.none,
        "errors": report.errors,
        "killed_mid_write": report.killed_mid_write,
        "model_bytes": report.model_bytes,
        "seconds": round(report.seconds, 1),
    }
    print(json.dumps(line), flush=True)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
