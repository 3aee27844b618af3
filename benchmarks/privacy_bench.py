"""What differential privacy costs and buys: accuracy and membership-inference exposure of
gossiplearn, local-only, FedAvg and FedPer, at several DP budgets, on the same split.

The scenario is gossiplearn/testing/scenarios/privacy.py: one ``gossiplearn sim --mode memory
--audit`` run per epsilon of --epsilons ("none": without DP). One JSON line on stdout (the
simulations' tables go to stderr): bench, dataset, partition, peers, rounds, epochs,
steps_per_round, delta, max_grad_norm, audit_references, seed, epsilons, runs (per epsilon
and method: accuracy_mean, accuracy_min, auc_loss_mean, auc_lira_mean, auc_lira_max,
epsilon_spent_max), dp_cost_points (per epsilon and method: mean accuracy lost to DP, in
points), auc_reduction (how much DP lowers the most exposed peer's LiRA AUC), total_s.

Usage:
  python benchmarks/privacy_bench.py                      # digits, 10 peers, 1,4,8,none
  python benchmarks/privacy_bench.py --peers 6 --rounds 5 --epsilons 8,none
  python benchmarks/privacy_bench.py --dataset fashion-mnist --hidden 200,200 --rounds 10
  (also --partition, --delta, --max-grad-norm, --audit-references, --epochs,
  --steps-per-round, --group-size, --lr, --seed)
Fashion-MNIST needs the Debian package dataset-fashion-mnist (`make bench` installs it).
"""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console

from gossiplearn.testing.scenarios.privacy import PrivacyOptions, privacy_figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--partition", default="dirichlet:0.3")
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epsilons", default="1,4,8,none", help='comma-separated; "none": no DP')
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--audit-references", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps-per-round", type=int, default=0)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--hidden", default="64,64")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    options = PrivacyOptions(
        dataset=args.dataset,
        partition=args.partition,
        peers=args.peers,
        rounds=args.rounds,
        epsilons=tuple(e.strip() for e in args.epsilons.split(",") if e.strip()),
        delta=args.delta,
        max_grad_norm=args.max_grad_norm,
        audit_references=args.audit_references,
        epochs=args.epochs,
        steps_per_round=args.steps_per_round,
        group_size=args.group_size,
        hidden=tuple(int(h) for h in args.hidden.split(",")),
        lr=args.lr,
        seed=args.seed,
    )
    line = privacy_figures(options, console=Console(file=sys.stderr))
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
