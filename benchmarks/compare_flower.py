"""gossiplearn's simulation against Flower's ``run_simulation`` on one workload, alternated.

Workload (issue 14): digits, Dirichlet(0.3), --peers 10, --rounds 50, --epochs 2 local
epochs, batch 32, SGD lr 0.05 momentum 0.9, MLP 64-128-64 backbone + linear head; the scenario
is gossiplearn/testing/scenarios/compare.py (``compare_flower``). Each of --launches runs
Flower 1.x ``run_simulation`` (Ray backend, FedAvg, every client fits and evaluates every
round), ``gossiplearn sim --mode process`` (real daemons) and ``gossiplearn sim --mode
memory``, each a fresh process timed from its start to its exit. Both use gossiplearn's own
digits split and model factory (Flower's interpreter imports them from this checkout).
Prints one JSON line: bench, flower (its version), peers, rounds, epochs, launches, flower_s,
process_s, memory_s (medians), process_over_flower and memory_over_flower (medians of
per-launch ratios), gossiplearn_accuracy (process and memory).

Flower runs in its own interpreter (--flower-python, or $FLOWER_PYTHON, or this one if it can
import flwr); without one this prints {"bench", "skipped"} and exits 0. Set one up apart, e.g.
  python3 -m venv /tmp/flower-venv && /tmp/flower-venv/bin/pip install torch==2.13.0 \\
  && /tmp/flower-venv/bin/pip install "flwr[simulation]" scikit-learn

Usage: python benchmarks/compare_flower.py [--launches 1] [--peers 10] [--rounds 50]
       [--epochs 2] [--flower-python PATH]
"""

from __future__ import annotations

import argparse
import json

from gossiplearn.testing.scenarios.compare import compare_flower, find_flower


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=1)
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--flower-python", help="an interpreter that can import flwr")
    args = parser.parse_args()
    python, version = find_flower(args.flower_python)
    if python is None:
        print(json.dumps({"bench": "compare_flower", "skipped": f"Flower absent: {version}"}))
        return
    line = compare_flower(python, version, args.launches, args.peers, args.rounds, args.epochs)
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
