"""Personal accuracy of gossiplearn against local-only, FedAvg and FedPer on Fashion-MNIST.

Same split (Dirichlet 0.3), same MLP, same local epochs and rounds for every method;
gossiplearn runs the real secure round (masks, shards, signatures) over the in-memory network,
in synchronous rounds of random groups of k. Prints one JSON line per peer count with each
method's mean / p10 / min final accuracy on the peers' own held-out data, and whether the
targets hold (mean >= FedPer - 1 pt, >= FedAvg + 7 pts, >= local + 4 pts; worst peer >= every
baseline's worst peer).

Needs the Debian package dataset-fashion-mnist (`make bench` installs it).
Usage: python benchmarks/learning_bench.py [--peers 10,50] [--rounds 30]
"""

from __future__ import annotations

import argparse
import json
import time

from gossiplearn.sim.baselines import run_fedavg, run_fedper, run_local_only
from gossiplearn.sim.datasets import load_all_shards
from gossiplearn.sim.launcher import SimConfig, model_factory, run_memory, train_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default="10,50")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--hidden", default="200,200")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--partition", default="dirichlet:0.3")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    for peers in (int(p) for p in args.peers.split(",")):
        config = SimConfig(
            peers=peers,
            rounds=args.rounds,
            dataset="fashion-mnist",
            partition=args.partition,
            group_size=args.group_size,
            mode="memory",
            seed=args.seed,
            epochs=args.epochs,
            hidden=tuple(int(h) for h in args.hidden.split(",")),
            lr=args.lr,
        ).validate()
        started = time.perf_counter()
        shards = load_all_shards(config.dataset, peers, config.partition, config.seed)
        factory, training = model_factory(config), train_config(config)
        methods = [run_memory(config, shards)] + [
            run(shards, factory, training, config.rounds, seed=config.seed)
            for run in (run_local_only, run_fedavg, run_fedper)
        ]
        summary = {m.name: m.summary() for m in methods}
        ours, local, fedavg, fedper = (
            summary[n] for n in ("gossiplearn", "local", "fedavg", "fedper")
        )
        print(
            json.dumps(
                {
                    "bench": "learning",
                    "dataset": config.dataset,
                    "partition": config.partition,
                    "peers": peers,
                    "rounds": config.rounds,
                    "group_size": config.group_size,
                    "hidden": list(config.hidden),
                    **{
                        f"{name}_{stat}": round(value, 4)
                        for name, stats in summary.items()
                        for stat, value in stats.items()
                    },
                    "bytes_per_peer": {m.name: round(m.bytes_per_peer) for m in methods},
                    "wall_s": {m.name: round(m.wall_s, 1) for m in methods},
                    "target_vs_fedper": ours["mean"] >= fedper["mean"] - 0.01,
                    "target_vs_fedavg": ours["mean"] >= fedavg["mean"] + 0.07,
                    "target_vs_local": ours["mean"] >= local["mean"] + 0.04,
                    "target_worst_peer": ours["min"]
                    >= max(s["min"] for s in (local, fedavg, fedper)),
                    "total_s": round(time.perf_counter() - started, 1),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
