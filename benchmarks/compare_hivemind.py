"""gossiplearn's secure round against hivemind's plaintext all-reduce, alternated in one run.

4 processes each side, one vector of --n float32 (default 10M, a 40 MB backbone), on
127.0.0.1; the scenario is gossiplearn/testing/scenarios/compare.py (``compare_hivemind``).
Each of --launches runs hivemind (4 fresh processes, 1 + --steps all-reduce steps),
gossiplearn's secure round (4 fresh peer processes, 1 + --rounds rounds, the daemon's round
engine over libp2p with the bulk channel) and its plaintext variant (unless --no-plain); the
first step or round of each launch is a warm-up. Prints one JSON line per n: bench, n, peers,
hivemind (its version), launches, hivemind_step_s (median time of an all-reduce at peer 0,
from the release of the four peers, their group already assembled, until peer 0 holds the
average: its matchmaking is left out, which favours hivemind), secure_round_s and
plain_round_s (median round time at gossiplearn's initiator, from its INVITE to the average,
matchmaking and agreement included), secure_over_hivemind and plain_over_hivemind (medians of
the per-launch ratios), per_launch, wall_s.

hivemind runs in its own interpreter (--hivemind-python, or $HIVEMIND_PYTHON, or this one if
it can import hivemind); without one this prints {"bench", "skipped"} and exits 0. Set one up
apart, e.g.:
  python3 -m venv /tmp/hivemind-venv && /tmp/hivemind-venv/bin/pip install torch==2.13.0 \\
  && /tmp/hivemind-venv/bin/pip install hivemind==1.1.12

Usage: python benchmarks/compare_hivemind.py [--n 10000000] [--launches 2] [--steps 3]
       [--rounds 3] [--hivemind-python PATH] [--no-plain] [--ring 32|16|8] [--load N]
(--ring: the secure round's ring, 32 bits or the narrow 16 or 8; the line says which.
--load N: N spinning processes run beside both systems for the whole run, as `stress --cpu N`
does, so the load average is at least N; the line gives hogs and the load average after each
launch, load_average.)
"""

from __future__ import annotations

import argparse
import json

from gossiplearn.testing.scenarios.compare import compare_hivemind, find_hivemind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="10000000", help="vector lengths, comma-separated")
    parser.add_argument("--launches", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed hivemind steps per launch")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per launch")
    parser.add_argument("--hivemind-python", help="an interpreter that can import hivemind")
    parser.add_argument("--no-plain", action="store_true", help="skip gossiplearn plaintext")
    parser.add_argument("--ring", type=int, choices=(32, 16, 8), default=32, help="ring bits")
    parser.add_argument(
        "--load", type=int, default=0, help="spinning processes beside both (stress --cpu N)"
    )
    args = parser.parse_args()
    python, version = find_hivemind(args.hivemind_python)
    if python is None:
        print(json.dumps({"bench": "compare_hivemind", "skipped": f"hivemind absent: {version}"}))
        return
    for n in (int(float(x)) for x in args.n.split(",")):
        line = compare_hivemind(
            python,
            version,
            n,
            args.launches,
            args.steps,
            args.rounds,
            not args.no_plain,
            args.ring,
            args.load,
        )
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
