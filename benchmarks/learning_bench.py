"""Personal accuracy of gossiplearn, in each simulation mode, against local-only, FedAvg and
FedPer on the same split, model, budget and weighting.

The scenario is gossiplearn/testing/scenarios/learning.py (``learning_figures``; its docstring
gives the method and the targets). One JSON line per peer count (--peers): bench, dataset,
partition, peers, rounds (the --rounds checkpoints; the run lasts the last), group_size,
max_weight, acceptance, overlap, local_reference, poison, accuracy (per method and
checkpoint: mean, p10, min; honest peers only with --poison), extra, bytes_per_peer and wall_s
per method, targets (process_minus_memory_points; per gossiplearn mode and checkpoint:
mean_vs_fedper_minus_0.5, worst_vs_min_worst_minus_1, sim_target; with --poison
honest_worst_gap_to_local and no_honest_peer_1_point_below_local), total_s.

Usage:
  python benchmarks/learning_bench.py --dataset digits --peers 4,8 --rounds 5,20 --modes process,memory
  python benchmarks/learning_bench.py --dataset fashion-mnist --peers 10,50 --rounds 30
  python benchmarks/learning_bench.py --dataset fashion-mnist --peers 10 --rounds 30 --poison zero
  python benchmarks/learning_bench.py --dataset digits --peers 8 --rounds 20 --rings 32,16
  (also --epochs, --steps-per-round, --group-size, --hidden, --lr, --partition, --max-weight,
  --no-acceptance, --overlap, --local-reference, --seed, --clip)
--rings 32,16: gossiplearn in each ring (gossiplearn_MODE_ring16, ...), and in targets each
narrow ring's mean minus the 32-bit ring's, in points (target: within 0.5).
Fashion-MNIST needs the Debian package dataset-fashion-mnist (`make bench` installs it).
"""

from __future__ import annotations

import argparse
import json

from gossiplearn.testing.scenarios.learning import POISONS, LearningOptions, learning_figures


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
    parser.add_argument("--poison", choices=POISONS)
    parser.add_argument("--local-reference", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rings", default="32", help="gossiplearn's rings, e.g. 32,16")
    parser.add_argument("--clip", type=float, default=8.0, help="a narrow ring's clip")
    args = parser.parse_args()
    modes = tuple(args.modes.split(","))
    if args.poison and modes != ("memory",):
        parser.error("--poison runs in memory mode only")
    options = LearningOptions(
        dataset=args.dataset,
        checkpoints=tuple(int(r) for r in args.rounds.split(",")),
        modes=modes,
        epochs=args.epochs,
        steps_per_round=args.steps_per_round,
        group_size=args.group_size,
        hidden=tuple(int(h) for h in args.hidden.split(",") if h),
        lr=args.lr,
        partition=args.partition,
        max_weight=args.max_weight,
        acceptance=not args.no_acceptance,
        overlap=args.overlap,
        poison=args.poison,
        local_reference=args.local_reference,
        seed=args.seed,
        rings=tuple(int(r) for r in args.rings.split(",")),
        clip=args.clip,
    )
    for peers in (int(p) for p in args.peers.split(",")):
        print(json.dumps(learning_figures(peers, options)), flush=True)


if __name__ == "__main__":
    main()
