"""What differential privacy costs and buys: accuracy and membership-inference exposure of
gossiplearn, local-only, FedAvg and FedPer, at several DP budgets, on the same split.

:func:`privacy_figures` runs one ``gossiplearn sim --mode memory --audit`` simulation per
epsilon (the baselines train under the same DP-SGD: clipping, noise and sampling), ``none``
one without DP. Per method and epsilon: final personal accuracy (mean, min over peers) and the
audit's AUCs (loss attack: mean over peers; offline LiRA: mean and the most exposed peer's).
Then, against ``none``:

- ``dp_cost_points``: mean accuracy lost to DP, in points (positive: DP costs accuracy);
- ``auc_reduction``: how much DP lowers the most exposed peer's LiRA AUC (positive: less
  exposed); an AUC of 0.5 is chance.

The audit is a lower bound on leakage (two attacks, few reference models); epsilon is the
guarantee. benchmarks/privacy_bench.py prints the report; tests/sim/test_privacy_bench.py runs
it with 3 peers and 2 rounds.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from gossiplearn.sim.config import SimConfig
from gossiplearn.sim.experiment import run_experiment
from gossiplearn.sim.results import MethodResult

NO_DP = "none"


@dataclass(frozen=True)
class PrivacyOptions:
    """privacy_bench's flags."""

    dataset: str = "digits"
    partition: str = "dirichlet:0.3"
    peers: int = 10
    rounds: int = 5
    epsilons: tuple[str, ...] = ("1", "4", "8", NO_DP)
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    audit_references: int = 2
    epochs: int = 1
    steps_per_round: int = 0
    group_size: int = 4
    hidden: tuple[int, ...] = (64, 64)
    lr: float = 0.05
    seed: int = 0

    def config(self, epsilon: str) -> SimConfig:
        return SimConfig(
            peers=self.peers,
            rounds=self.rounds,
            dataset=self.dataset,
            partition=self.partition,
            group_size=self.group_size,
            mode="memory",
            seed=self.seed,
            epochs=self.epochs,
            steps_per_round=self.steps_per_round,
            hidden=self.hidden,
            lr=self.lr,
            dp_epsilon=0.0 if epsilon == NO_DP else float(epsilon),
            dp_delta=self.delta,
            dp_max_grad_norm=self.max_grad_norm,
            audit=True,
            audit_references=self.audit_references,
        ).validate()


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


def privacy_figures(options: PrivacyOptions, console: Console | None = None) -> dict[str, Any]:
    """privacy_bench's line; the simulations' tables and progress go to ``console`` (default:
    stderr, so that stdout holds the line alone)."""
    console = console or Console(file=sys.stderr)
    started = time.perf_counter()
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="privacy-bench-") as tmp:
        for epsilon in options.epsilons:
            console.print(f"privacy: epsilon {epsilon}")
            config = options.config(epsilon)
            results = run_experiment(config, Path(tmp) / f"eps-{epsilon}", console=console)
            runs[epsilon] = {m.name: method_figures(m) for m in results}
    baseline = runs.get(NO_DP)
    cost: dict[str, dict[str, float | None]] = {}
    reduction: dict[str, dict[str, float | None]] = {}
    for epsilon, methods in runs.items():
        if baseline is None or epsilon == NO_DP:
            continue
        cost[epsilon] = {
            name: _difference(baseline[name]["accuracy_mean"], figures["accuracy_mean"], 100.0)
            for name, figures in methods.items()
        }
        reduction[epsilon] = {
            name: _difference(baseline[name]["auc_lira_max"], figures["auc_lira_max"])
            for name, figures in methods.items()
        }
    settings = asdict(options)
    keys = (
        *("dataset", "partition", "peers", "rounds", "epochs", "steps_per_round", "delta"),
        *("max_grad_norm", "audit_references", "seed"),
    )
    return {
        "bench": "privacy",
        **{key: settings[key] for key in keys},
        "epsilons": list(options.epsilons),
        "runs": runs,
        "dp_cost_points": cost,
        "auc_reduction": reduction,
        "total_s": round(time.perf_counter() - started, 1),
    }
