"""Personal accuracy of gossiplearn, in each simulation mode, against local-only, FedAvg and
FedPer on the same split, model, budget and weighting; and gossiplearn at scale in memory mode.

:func:`learning_figures`: every method trains the same training part of each peer's shard for
the same local budget per round and is measured on the same test part (gossiplearn peers also
hold out a validation part for personal acceptance; the baselines do not use it). The
baselines weigh peers as gossiplearn does (``max_weight``, equal weights by default).
gossiplearn runs the real secure round: ``memory`` over the in-memory network in synchronous
rounds, ``process`` as real daemons over libp2p, ``inproc`` as daemons in one process. Each
method's mean / p10 / min accuracy after each checkpoint round, and the targets:

- ``process_minus_memory_points``: process mode's mean minus memory mode's, in points, at
  each checkpoint (target: within 2);
- ``vs_fedper``: mean >= FedPer - 0.5 point, worst peer >= the worst of local-only and FedPer
  - 1 point (``make sim``'s looser target: mean and worst >= local-only and >= FedPer - 2);
- ``poison`` (``zero`` or ``lever``): peer 0 poisons (an all-zero backbone, plausible, or a
  weight of 2^40); no honest peer ends more than 1 point below its own local-only accuracy.

:func:`scale_figures`: ``peers`` peers on synthetic data in one process; every round each
peer trains, peers are shuffled into groups and each group runs the real secure round.

benchmarks/learning_bench.py and scale_bench.py print these; tests/scenarios/test_learning.py
runs them small.
"""

from __future__ import annotations

import dataclasses
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gossiplearn.sim.baselines import run_fedavg, run_fedper, run_local_only
from gossiplearn.sim.config import SimConfig, load_data, model_factory, train_config
from gossiplearn.sim.daemons import run_inproc, run_process
from gossiplearn.sim.datasets import load_all_shards
from gossiplearn.sim.memory import run_memory
from gossiplearn.sim.results import MethodResult
from gossiplearn.testing.insider import ZeroContribution, lever

POISONS = ("zero", "lever")


@dataclass(frozen=True)
class LearningOptions:
    """learning_bench's flags (but ``--peers``: one line per peer count)."""

    dataset: str = "fashion-mnist"
    checkpoints: tuple[int, ...] = (30,)  # the run lasts the last
    modes: tuple[str, ...] = ("memory",)
    epochs: int = 1
    steps_per_round: int = 0
    group_size: int = 4
    hidden: tuple[int, ...] = ()  # () : 200,200 for fashion-mnist, 64,64 otherwise
    lr: float = 0.05
    partition: str = "dirichlet:0.3"
    max_weight: int = 1
    acceptance: bool = True
    overlap: bool = False
    poison: str | None = None
    local_reference: bool = False
    seed: int = 0
    #: gossiplearn's secure sum in each of these rings: 32, or the narrow 16 and 8 bits (a
    #: narrow ring's method is named gossiplearn_MODE_ringBITS); clip for the narrow ones
    rings: tuple[int, ...] = (32,)
    clip: float = 8.0

    def config(self, peers: int) -> SimConfig:
        hidden = self.hidden or ((200, 200) if self.dataset == "fashion-mnist" else (64, 64))
        return SimConfig(
            peers=peers,
            rounds=max(self.checkpoints),
            dataset=self.dataset,
            partition=self.partition,
            group_size=self.group_size,
            mode="memory",
            seed=self.seed,
            epochs=self.epochs,
            steps_per_round=self.steps_per_round,
            hidden=hidden,
            lr=self.lr,
            max_weight=self.max_weight,
            acceptance=self.acceptance,
            interval_s=0.5,
            overlap=self.overlap,
            local_reference=self.local_reference,
        ).validate()


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
        factories: dict[int, Callable[..., Any]] = {}
        if poison == "zero":
            factories = {0: ZeroContribution}
        elif poison == "lever":
            factories = {0: lever(1 << 40)}
        return run_memory(config, shards, node_factories=factories)
    if poison:
        raise ValueError("poison runs in memory mode only")
    with tempfile.TemporaryDirectory(prefix="learning-bench-") as out:
        run = run_process if config.mode == "process" else run_inproc
        return run(config, Path(out))


def _targets(
    results: dict[str, MethodResult],
    figures: dict[str, Any],
    checkpoints: tuple[int, ...],
    poison: str | None,
) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    if "gossiplearn_process" in results and "gossiplearn_memory" in results:
        process, memory = figures["gossiplearn_process"], figures["gossiplearn_memory"]
        targets["process_minus_memory_points"] = {
            r: round(100 * (process[r]["mean"] - memory[r]["mean"]), 2) for r in checkpoints
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
        if poison:
            gaps = np.asarray(results[name].final)[1:] - np.asarray(results["local"].final)[1:]
            targets[name]["honest_worst_gap_to_local"] = round(float(gaps.min()), 4)
            targets[name]["no_honest_peer_1_point_below_local"] = bool(gaps.min() >= -0.01)
    return targets


def learning_figures(peers: int, options: LearningOptions) -> dict[str, Any]:
    """learning_bench's line for ``peers`` peers."""
    if options.poison is not None and options.poison not in POISONS:
        raise ValueError(f"poison must be one of {', '.join(POISONS)}")
    base = options.config(peers)
    started = time.perf_counter()
    shards = load_all_shards(
        base.dataset, peers, base.partition, base.seed, base.holdout, base.validation
    )
    factory, training = model_factory(base), train_config(base)
    results: dict[str, MethodResult] = {}
    for mode in options.modes:
        for ring in options.rings:
            config = dataclasses.replace(base, mode=mode, ring_bits=ring, clip=options.clip)
            name = f"gossiplearn_{mode}" + ("" if ring == 32 else f"_ring{ring}")
            results[name] = run_gossiplearn(config, shards, options.poison)
    for run in (run_local_only, run_fedavg, run_fedper):
        result = run(
            shards, factory, training, base.rounds, seed=base.seed, max_weight=base.max_weight
        )
        results[result.name] = result
    honest = list(range(1, peers)) if options.poison else None
    figures: dict[str, Any] = {
        name: {r: summary_at(result, r, honest) for r in options.checkpoints}
        for name, result in results.items()
    }
    targets = _targets(results, figures, options.checkpoints, options.poison)
    for ring in (r for r in options.rings if r != 32):
        for mode in options.modes:
            narrow, full = f"gossiplearn_{mode}_ring{ring}", f"gossiplearn_{mode}"
            if full in figures:
                last = max(options.checkpoints)
                points = 100 * (figures[narrow][last]["mean"] - figures[full][last]["mean"])
                targets[f"{narrow}_minus_ring32_points"] = round(points, 2)
                targets[f"{narrow}_within_half_a_point"] = abs(points) <= 0.5
    return {
        "bench": "learning",
        "dataset": base.dataset,
        "partition": base.partition,
        "peers": peers,
        "rounds": list(options.checkpoints),
        "group_size": base.group_size,
        "max_weight": base.max_weight,
        "acceptance": base.acceptance,
        "overlap": options.overlap,
        "local_reference": options.local_reference,
        "poison": options.poison,
        "rings": list(options.rings),
        "accuracy": figures,
        "extra": {name: r.extra for name, r in results.items()},
        "bytes_per_peer": {name: round(r.bytes_per_peer) for name, r in results.items()},
        "wall_s": {name: round(r.wall_s, 1) for name, r in results.items()},
        "targets": targets,
        "total_s": round(time.perf_counter() - started, 1),
    }


def scale_figures(
    peers: int = 1000, rounds: int = 20, group_size: int = 4, seed: int = 0
) -> dict[str, Any]:
    """scale_bench's line: wall time (and of it, set-up and seconds per round), peak RSS of
    this process, aborts and the mean accuracy at the end."""
    import torch

    torch.set_num_threads(1)
    config = SimConfig(
        peers=peers,
        rounds=rounds,
        dataset="synthetic",
        partition="synthetic:1,1",
        group_size=group_size,
        mode="memory",
        seed=seed,
        hidden=(32,),
    ).validate()

    def cpu() -> float:  # this process and its (joined) workers, user and system
        usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        return sum(u.ru_utime + u.ru_stime for u in usage)

    cpu_before = cpu()
    started = time.perf_counter()
    ends: list[float] = []  # when each round ended
    result = run_memory(config, load_data(config), lambda *_: ends.append(time.perf_counter()))
    wall = time.perf_counter() - started
    cpu_s = cpu() - cpu_before
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # memory mode's worker processes (from 200 peers), each counting the pages it shares
    # with this one (forked) as its own: the largest
    worker_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    # The first round carries the set-up (data, models, identities, workers); the others are
    # the rounds alone.
    first = ends[0] - started if ends else wall
    per_round = (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else first
    return {
        "bench": "scale",
        "mode": "memory",
        "peers": config.peers,
        "rounds": config.rounds,
        "dataset": config.dataset,
        "wall_s": round(wall, 1),
        "first_round_s": round(first, 1),
        "s_per_round": round(per_round, 2),
        # on a shared machine, the figure that does not depend on the neighbours: CPU seconds
        # of this process and its workers (on W free cores, wall >= cpu_s / W)
        "cpu_s": round(cpu_s, 1),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "worker_peak_rss_mb": round(worker_rss_mb, 1),
        "rounds_aborted": result.extra.get("rounds_aborted", 0),
        "averages_refused": result.extra.get("averages_refused", 0),
        "mean_accuracy": round(result.summary()["mean"], 4),
        "bytes_per_peer": round(result.bytes_per_peer),
    }
