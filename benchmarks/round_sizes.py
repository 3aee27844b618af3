"""Round time against backbone size: gossiplearn secure, gossiplearn plaintext and hivemind.

For each --n (default 1M, 3M, 10M, 30M, 100M float32), alternates hivemind's all-reduce
(skipped without hivemind, see compare_hivemind.py) with gossiplearn's secure and plaintext
rounds (4 processes each, as round_bench.py --net libp2p); the scenario is
gossiplearn/testing/scenarios/compare.py (``round_sizes``, ``plot_round_sizes``). Prints one
JSON line per n: bench, n, model_mb, hivemind_s (median of --steps all-reduce steps), secure_s
and plain_s (median of --rounds rounds), secure_over_hivemind; first a line saying hivemind was
skipped, if it was. With --plot PATH, draws the three curves (log-log) into a PNG; with
--from-json FILE, only plots the lines of an earlier run.

Usage: python benchmarks/round_sizes.py [--n 1e6,3e6,1e7,3e7,1e8] [--rounds 3] [--steps 3]
       [--hivemind-python PATH] [--rings 32,16] [--plot docs/round_time_vs_size.png]
       [--from-json FILE]
(--rings: a secure_s figure for the 32-bit ring, secure16_s for the 16-bit one, ...)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gossiplearn.testing.scenarios.compare import find_hivemind, plot_round_sizes, round_sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1e6,3e6,1e7,3e7,1e8")
    parser.add_argument("--rounds", type=int, default=3, help="timed gossiplearn rounds (median)")
    parser.add_argument("--steps", type=int, default=3, help="timed hivemind steps (median)")
    parser.add_argument("--hivemind-python")
    parser.add_argument("--rings", default="32", help="secure rounds' rings, e.g. 32,16")
    parser.add_argument("--plot", type=Path, help="write the PNG here")
    parser.add_argument("--from-json", type=Path, help="only plot these JSON lines")
    args = parser.parse_args()
    if args.from_json:
        lines = [json.loads(x) for x in args.from_json.read_text().splitlines() if x.strip()]
        lines = [line for line in lines if "n" in line]
    else:
        hivemind, why = find_hivemind(args.hivemind_python)
        if hivemind is None:
            print(json.dumps({"bench": "round_sizes", "hivemind": f"skipped: {why}"}))
        lines = []
        for n in (int(float(x)) for x in args.n.split(",")):
            rings = tuple(int(r) for r in args.rings.split(","))
            line = round_sizes(n, args.rounds, args.steps, hivemind, rings)
            print(json.dumps(line), flush=True)
            lines.append(line)
    if args.plot:
        plot_round_sizes(lines, args.plot)


if __name__ == "__main__":
    main()
