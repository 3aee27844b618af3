"""gossiplearn at scale in memory mode: 1000 peers, synthetic data, 20 rounds, in one process.

Every round each peer trains locally, peers are shuffled into groups of k and each group runs
the real secure round over the in-memory network. Prints one JSON line: wall time, peak RSS,
rounds aborted, and the mean personal accuracy at the end.

Usage: python benchmarks/scale_bench.py [--peers 1000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from gossiplearn.sim.config import SimConfig, load_data
from gossiplearn.sim.memory import run_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    config = SimConfig(
        peers=args.peers,
        rounds=args.rounds,
        dataset="synthetic",
        partition="synthetic:1,1",
        group_size=args.group_size,
        mode="memory",
        seed=args.seed,
        hidden=(32,),
    ).validate()
    started = time.perf_counter()
    shards = load_data(config)
    result = run_memory(config, shards)
    wall = time.perf_counter() - started
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "bench": "scale",
                "mode": "memory",
                "peers": config.peers,
                "rounds": config.rounds,
                "dataset": config.dataset,
                "wall_s": round(wall, 1),
                "peak_rss_mb": round(peak_rss_mb, 1),
                "rounds_aborted": result.extra.get("rounds_aborted", 0),
                "averages_refused": result.extra.get("averages_refused", 0),
                "mean_accuracy": round(result.summary()["mean"], 4),
                "bytes_per_peer": round(result.bytes_per_peer),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
