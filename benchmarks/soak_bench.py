"""Soak: N real peer daemons run for a long while; memory, file descriptors and trio tasks
must not creep up.

The scenario (gossiplearn/testing/scenarios/soak.py, whose docstring explains each figure and
bound): ``--peers`` ``gossiplearn run`` processes on digits for ``--duration-s``, every peer's
/status read every ``--sample-s``; medians over the first ``--window-s`` after the
``--warmup-s`` against the last ``--window-s``.

Prints one JSON line: peers, duration_s, warmup_s, window_s, sample_s, crashes, samples
(successful per-peer /status readings), rounds_completed_total, rounds_aborted_total (summed
over peers, their last readings), rss_growth_max with rss_baseline_mb / rss_final_mb /
rss_slope_mb_per_h of that peer, fds_growth_max, tasks_growth_max, rss_ok (growth below
``--max-rss-growth``), fds_flat (within ``--fd-slack``), tasks_flat (within ``--task-slack``),
ok; then details: peers_measured, rss_first_mb_max (the largest RSS in any peer's first
sample), rss_final_mb_max (the largest final-window median), worst_peer of each figure,
fds_baseline / fds_final, tasks_baseline / tasks_final, per_peer growths, baselines and round
counts, crash_details, unclean_stops, missed_readings, run_s and wall_s. Progress goes to
stderr every ~30 s. With ``--out DIR`` the peer directories (logs, checkpoints) are kept there
together with ``soak_series.json``, every sample taken.

Exits 0 whenever the figures were computed, even if one misses its bound (the JSON says
so); 1 when the soak itself could not run (no peer ever answered, a run too short to have
a post-warm-up window, a non-empty --out).

Usage: python benchmarks/soak_bench.py [--peers 8] [--duration-s 600] [--warmup-s 120]
       [--sample-s 5] [--window-s 60] [--seed 0] [--max-rss-growth 0.10] [--fd-slack 2]
       [--task-slack 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from gossiplearn.testing.scenarios.soak import Bounds, SoakConfig, TooShortError, run_soak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--warmup-s", type=float, default=120.0)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--window-s", type=float, default=60.0, help="baseline/final window")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-rss-growth", type=float, default=0.10)
    parser.add_argument("--fd-slack", type=float, default=2.0)
    parser.add_argument("--task-slack", type=float, default=5.0)
    parser.add_argument("--out", type=Path, help="keep the peer directories here (empty/new)")
    args = parser.parse_args()
    config = SoakConfig(
        args.peers,
        args.duration_s,
        args.warmup_s,
        args.sample_s,
        args.window_s,
        args.seed,
        Bounds(args.max_rss_growth, args.fd_slack, args.task_slack),
    )
    try:
        config.validate()
    except ValueError as exc:
        parser.error(str(exc))
    if args.out is not None and args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} is not empty (its checkpoints would be resumed)")

    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so the peers are stopped, not orphaned.
    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    try:
        with tempfile.TemporaryDirectory(prefix="soak-bench-") as temp:
            out = args.out or Path(temp)
            out.mkdir(parents=True, exist_ok=True)
            report = run_soak(config, out)
    except (RuntimeError, TooShortError) as exc:
        print(f"[soak] the benchmark could not run: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[soak] interrupted: every peer stopped", file=sys.stderr)
        return 130
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
