"""Personal accuracy of gossiplearn, in each simulation mode, against local-only, FedAvg and
FedPer on the same split, model, budget and weighting.

Every method trains the same training part of each peer's shard for the same local budget per
round and is measured on the same test part (gossiplearn peers also hold out a validation part
for personal acceptance; the baselines do not use it). The baselines weigh peers as gossiplearn
does (``--max-weight``, equal weights by default). gossiplearn runs the real secure round:
``memory`` over the in-memory network in synchronous rounds, ``process`` as real daemons over
libp2p, ``inproc`` as daemons in one process.

One JSON line per peer count, with each method's mean / p10 / min accuracy after each of the
``--rounds`` checkpoints, and the targets:

- ``process_minus_memory_points``: process mode's mean minus memory mode's, in points, at
  each checkpoint (target: within 2);
- ``vs_fedper``: mean >= FedPer - 0.5 point, worst peer >= the worst of local-only and FedPer
  - 1 point (``make sim``'s looser target: mean and worst >= local-only and >= FedPer - 2);
- ``poison`` (``--poison zero|lever``): peer 0 poisons (an all-zero backbone, plausible, or a
  weight of 2^40); no honest peer ends more than 1 point below its own local-only accuracy.

Usage:
  python benchmarks/learning_bench.py --dataset digits --peers 4,8 --rounds 5,20 --modes process,memory
  python benchmarks/learning_bench.py --dataset fashion-mnist --peers 10,50 --rounds 30
  python benchmarks/learning_bench.py --dataset fashion-mnist --peers 10 --rounds 30 --poison zero
Fashion-MNIST needs the Debian package dataset-fashion-mnist (`make bench` installs it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from gossiplearn.sim.baselines import run_fedavg, run_fedper, run_local_only
from gossiplearn.sim.config import SimConfig, model_factory, train_config
from gossiplearn.sim.daemons import run_inproc, run_process
from gossiplearn.sim.datasets import load_all_shards
from gossiplearn.sim.memory import run_memory
from gossiplearn.sim.results import MethodResult
from gossiplearn.testing.insider import ZeroContribution, lever


def summary_at(
    result: MethodResult, round_: int, peers: list[int] | None = None
) -> dict[str, float]:
    row = np.asarray(result.accuracy_per_round[round_ - 1], dtype=np.float64)
    if peers is not None:
        row = row[peers]
    return {
        "mean": round(float(row.mean()), 4),
        "p10": round(float(np.percentile(row, 10)), 4),
        "min": round(float(row.min()), 4),
    }


def run_gossiplearn(config: SimConfig, shards: Any, poison: str | None) -> MethodResult:
    if config.mode == "memory":
        factories = {}
        if poison == "zero":
            factories = {0: ZeroContribution}
        elif poison == "lever":
            factories = {0: lever(1 << 40)}
        return run_memory(config, shards, node_factories=factories)
    if poison:
        raise SystemExit("--poison runs in memory mode only")
    with tempfile.TemporaryDirectory(prefix="learning-bench-") as out:
        run = run_process if config.mode == "process" else run_inproc
        return run(config, Path(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--peers", default="10,50")
    parser.add_argument("--rounds", default="30", help="checkpoints; the run lasts the last")
    parser.add_argument("--modes", default="memory")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps-per-round", type=int, default=0)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--hidden", default="")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--partition", default="dirichlet:0.3")
    parser.add_argument("--max-weight", type=int, default=1)
    parser.add_argument("--no-acceptance", action="store_true")
    parser.add_argument("--overlap", action="store_true", help="process/inproc: training.overlap")
    parser.add_argument("--poison", choices=("zero", "lever"))
    parser.add_argument("--local-reference", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    checkpoints = [int(r) for r in args.rounds.split(",")]
    rounds = max(checkpoints)
    hidden = args.hidden or ("200,200" if args.dataset == "fashion-mnist" else "64,64")

    for peers in (int(p) for p in args.peers.split(",")):
        base = SimConfig(
            peers=peers,
            rounds=rounds,
            dataset=args.dataset,
            partition=args.partition,
            group_size=args.group_size,
            mode="memory",
            seed=args.seed,
            epochs=args.epochs,
            steps_per_round=args.steps_per_round,
            hidden=tuple(int(h) for h in hidden.split(",")),
            lr=args.lr,
            max_weight=args.max_weight,
            acceptance=not args.no_acceptance,
            interval_s=0.5,
            overlap=args.overlap,
            local_reference=args.local_reference,
        ).validate()
        started = time.perf_counter()
        shards = load_all_shards(
            base.dataset, peers, base.partition, base.seed, base.holdout, base.validation
        )
        factory, training = model_factory(base), train_config(base)
        results: dict[str, MethodResult] = {}
        for mode in args.modes.split(","):
            config = dataclasses.replace(base, mode=mode)
            results[f"gossiplearn_{mode}"] = run_gossiplearn(config, shards, args.poison)
        for run in (run_local_only, run_fedavg, run_fedper):
            result = run(
                shards, factory, training, rounds, seed=base.seed, max_weight=base.max_weight
            )
            results[result.name] = result
        honest = list(range(1, peers)) if args.poison else None
        figures: dict[str, Any] = {
            name: {r: summary_at(result, r, honest) for r in checkpoints}
            for name, result in results.items()
        }
        targets: dict[str, Any] = {}
        if "gossiplearn_process" in results and "gossiplearn_memory" in results:
            targets["process_minus_memory_points"] = {
                r: round(
                    100
                    * (
                        figures["gossiplearn_process"][r]["mean"]
                        - figures["gossiplearn_memory"][r]["mean"]
                    ),
                    2,
                )
                for r in checkpoints
            }
        for name in (n for n in results if n.startswith("gossiplearn")):
            targets[name] = {}
            for r in checkpoints:
                ours, local, fedper = (figures[m][r] for m in (name, "local", "fedper"))
                targets[name][r] = {
                    "mean_vs_fedper_minus_0.5": ours["mean"] >= fedper["mean"] - 0.005,
                    "worst_vs_min_worst_minus_1": ours["min"]
                    >= min(local["min"], fedper["min"]) - 0.01,
                    "sim_target": ours["mean"] >= local["mean"]
                    and ours["min"] >= local["min"]
                    and ours["mean"] >= fedper["mean"] - 0.02
                    and ours["min"] >= fedper["min"] - 0.02,
                }
            if args.poison:
                gaps = np.asarray(results[name].final)[1:] - np.asarray(results["local"].final)[1:]
                targets[name]["honest_worst_gap_to_local"] = round(float(gaps.min()), 4)
                targets[name]["no_honest_peer_1_point_below_local"] = bool(gaps.min() >= -0.01)
        print(
            json.dumps(
                {
                    "bench": "learning",
                    "dataset": base.dataset,
                    "partition": base.partition,
                    "peers": peers,
                    "rounds": checkpoints,
                    "group_size": base.group_size,
                    "max_weight": base.max_weight,
                    "acceptance": base.acceptance,
                    "overlap": args.overlap,
                    "local_reference": args.local_reference,
                    "poison": args.poison,
                    "accuracy": figures,
                    "extra": {name: r.extra for name, r in results.items()},
                    "bytes_per_peer": {
                        name: round(r.bytes_per_peer) for name, r in results.items()
                    },
                    "wall_s": {name: round(r.wall_s, 1) for name, r in results.items()},
                    "targets": targets,
                    "total_s": round(time.perf_counter() - started, 1),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
