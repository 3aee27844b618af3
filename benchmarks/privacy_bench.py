"""What differential privacy costs and buys: accuracy and membership-inference exposure of
gossiplearn, local-only, FedAvg and FedPer, at several DP budgets, on the same split.

Each epsilon is one ``gossiplearn sim --mode memory --audit`` run (the baselines train under
the same DP-SGD: clipping, noise and sampling), ``none`` a run without DP. Per method and
epsilon: final personal accuracy (mean, min over peers) and the audit's AUCs (loss attack:
mean over peers; offline LiRA: mean and the most exposed peer's). Then, against ``none``:

- ``dp_cost_points``: mean accuracy lost to DP, in points (positive: DP costs accuracy);
- ``auc_reduction``: how much DP lowers the most exposed peer's LiRA AUC (positive: less
  exposed); an AUC of 0.5 is chance.

The audit is a lower bound on leakage (two attacks, few reference models); epsilon is the
guarantee. One JSON line per run, on stdout; the simulation's tables go to stderr.

Usage:
  python benchmarks/privacy_bench.py                      # digits, 10 peers, 1,4,8,none
  python benchmarks/privacy_bench.py --peers 6 --rounds 5 --epsilons 8,none
  python benchmarks/privacy_bench.py --dataset fashion-mnist --hidden 200,200 --rounds 10
Fashion-MNIST needs the Debian package dataset-fashion-mnist (`make bench` installs it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from gossiplearn.sim.config import SimConfig
from gossiplearn.sim.experiment import run_experiment
from gossiplearn.sim.results import MethodResult

NO_DP = "none"


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def method_figures(method: MethodResult) -> dict[str, Any]:
    summary, audit = method.summary(), method.audit or {}
    return {
        "accuracy_mean": _round(summary["mean"]),
        "accuracy_min": _round(summary["min"]),
        "auc_loss_mean": _round(audit.get("mean_auc_loss")),
        "auc_lira_mean": _round(audit.get("mean_auc_lira")),
        "auc_lira_max": _round(audit.get("max_auc_lira")),
        "epsilon_spent_max": _round(method.extra.get("epsilon_spent_max"), 3),
    }


def _difference(a: float | None, b: float | None, scale: float = 1.0) -> float | None:
    return None if a is None or b is None else round(scale * (a - b), 2 if scale > 1 else 4)


def main(argv: list[str] | None = None) -> None:
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
    args = parser.parse_args(argv)
    epsilons = [e.strip() for e in args.epsilons.split(",") if e.strip()]
    started = time.perf_counter()
    # The simulation's tables and progress bars: stderr, so stdout is the JSON line alone.
    console = Console(file=sys.stderr)
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="privacy-bench-") as tmp:
        for epsilon in epsilons:
            config = SimConfig(
                peers=args.peers,
                rounds=args.rounds,
                dataset=args.dataset,
                partition=args.partition,
                group_size=args.group_size,
                mode="memory",
                seed=args.seed,
                epochs=args.epochs,
                steps_per_round=args.steps_per_round,
                hidden=tuple(int(h) for h in args.hidden.split(",")),
                lr=args.lr,
                dp_epsilon=0.0 if epsilon == NO_DP else float(epsilon),
                dp_delta=args.delta,
                dp_max_grad_norm=args.max_grad_norm,
                audit=True,
                audit_references=args.audit_references,
            ).validate()
            print(f"privacy_bench: epsilon {epsilon}", file=sys.stderr, flush=True)
            methods = run_experiment(config, Path(tmp) / f"eps-{epsilon}", console=console)
            runs[epsilon] = {m.name: method_figures(m) for m in methods}
    baseline = runs.get(NO_DP)
    cost: dict[str, dict[str, float | None]] = {}
    reduction: dict[str, dict[str, float | None]] = {}
    if baseline is not None:
        for epsilon, methods in runs.items():
            if epsilon == NO_DP:
                continue
            cost[epsilon] = {
                name: _difference(baseline[name]["accuracy_mean"], figures["accuracy_mean"], 100.0)
                for name, figures in methods.items()
            }
            reduction[epsilon] = {
                name: _difference(baseline[name]["auc_lira_max"], figures["auc_lira_max"])
                for name, figures in methods.items()
            }
    print(
        json.dumps(
            {
                "bench": "privacy",
                "dataset": args.dataset,
                "partition": args.partition,
                "peers": args.peers,
                "rounds": args.rounds,
                "epochs": args.epochs,
                "steps_per_round": args.steps_per_round,
                "delta": args.delta,
                "max_grad_norm": args.max_grad_norm,
                "audit_references": args.audit_references,
                "seed": args.seed,
                "epsilons": epsilons,
                "runs": runs,
                "dp_cost_points": cost,
                "auc_reduction": reduction,
                "total_s": round(time.perf_counter() - started, 1),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
