"""gossiplearn at scale in memory mode: 1000, 3000 and 10,000 peers, synthetic data, 20 rounds.

Every round each peer trains locally, peers are shuffled into groups of --group-size and each
group runs the real secure round over the in-memory network (the scenario:
``scale_figures`` in gossiplearn/testing/scenarios/learning.py). Prints one JSON line per
size, each measured in a fresh process: bench, mode, peers, rounds, dataset, wall_s
(first_round_s of it: set-up and the first round; s_per_round: the mean of the others),
cpu_s (this process and its workers), peak_rss_mb (this process; worker_peak_rss_mb: the
largest worker, pages shared with this one included), rounds_aborted, averages_refused,
mean_accuracy (mean personal accuracy at the end), bytes_per_peer.

Usage: python benchmarks/scale_bench.py [--peers 1000,3000,10000] [--rounds 20]
       [--group-size 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from gossiplearn.testing.scenarios.learning import scale_figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default="1000,3000,10000", help="sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = [int(size) for size in args.peers.split(",")]
    if len(sizes) == 1:
        line = scale_figures(sizes[0], args.rounds, args.group_size, args.seed)
        print(json.dumps(line), flush=True)
        return
    for size in sizes:  # each in its own process: its own peak RSS
        rest = ["--rounds", str(args.rounds), "--group-size", str(args.group_size)]
        rest += ["--seed", str(args.seed)]
        subprocess.run([sys.executable, __file__, "--peers", str(size), *rest], check=True)


if __name__ == "__main__":
    main()
