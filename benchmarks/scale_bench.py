"""gossiplearn at scale in memory mode: 1000 peers, synthetic data, 20 rounds, in one process.

Every round each peer trains locally, peers are shuffled into groups of --group-size and each
group runs the real secure round over the in-memory network (the scenario:
``scale_figures`` in gossiplearn/testing/scenarios/learning.py). Prints one JSON line: bench,
mode, peers, rounds, dataset, wall_s, peak_rss_mb, rounds_aborted, averages_refused,
mean_accuracy (mean personal accuracy at the end), bytes_per_peer.

Usage: python benchmarks/scale_bench.py [--peers 1000] [--rounds 20] [--group-size 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import json

from gossiplearn.testing.scenarios.learning import scale_figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    line = scale_figures(args.peers, args.rounds, args.group_size, args.seed)
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
