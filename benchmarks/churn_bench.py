"""Churn: real peer daemons on 127.0.0.1; every K seconds one is killed with SIGKILL and
restarted after a delay. Compared with a fault-free run of the same network and seed.

The scenario (gossiplearn/testing/scenarios/churn.py): ``--peers`` ``gossiplearn run``
processes on digits, warmed up to a round each, then ``--duration-s`` of polling /status,
a SIGKILL every ``--kill-every-s`` and a restart ``--restart-delay-s`` later (rounds time out
after ``--round-timeout-s``); then the same without faults (unless ``--no-fault-free``).

Prints one JSON line: peers, duration_s, kill_every_s, restart_delay_s, seed,
survivor_crashes (must be 0), stuck_rounds (past their deadline by more than 5 s: must be 0),
max_overrun_s, kills, restarts, restarted_with_checkpoint, restarted_fresh,
resumed_from_checkpoint, resume_failures (every restart must resume its checkpoint),
accuracy_churn, rounds_churn, aborts_churn, abort_reasons_churn, crashed, wall_s_churn; with
the fault-free run also accuracy_fault_free, accuracy_gap_pts (fault-free minus churn, in
points: at most 2), rounds_fault_free, aborts_fault_free, survivor_crashes_fault_free,
stuck_rounds_fault_free, wall_s_fault_free; and ok. Progress goes to stderr.

Usage: python benchmarks/churn_bench.py [--peers 16] [--duration-s 300] [--kill-every-s 30]
       [--restart-delay-s 10] [--round-timeout-s 20] [--seed 0] [--dir DIR] [--no-fault-free]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from gossiplearn.testing.scenarios.churn import ChurnConfig, run_churn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = ChurnConfig()
    parser.add_argument("--peers", type=int, default=defaults.peers)
    parser.add_argument("--duration-s", type=float, default=defaults.duration_s)
    parser.add_argument("--kill-every-s", type=float, default=defaults.kill_every_s)
    parser.add_argument("--restart-delay-s", type=float, default=defaults.restart_delay_s)
    parser.add_argument("--round-timeout-s", type=float, default=defaults.round_timeout_s)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--dir", type=Path, help="keep the peer directories here")
    parser.add_argument("--no-fault-free", action="store_true", help="skip the comparison run")
    args = parser.parse_args()
    config = ChurnConfig(
        peers=args.peers,
        duration_s=args.duration_s,
        kill_every_s=args.kill_every_s,
        restart_delay_s=args.restart_delay_s,
        round_timeout_s=args.round_timeout_s,
        seed=args.seed,
    )

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="churn-bench-") as temp:
        report = run_churn(args.dir or Path(temp), config, not args.no_fault_free, say)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
