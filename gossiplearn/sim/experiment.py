"""One simulation run end to end: split the data, run gossiplearn in the chosen mode, run the
baselines on the same split and budget, then print the table and write results and plots."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from gossiplearn.sim.config import (
    SimConfig,
    check_parts,
    load_data,
    model_factory,
    train_config,
    trainer_factory,
)
from gossiplearn.sim.daemons import run_inproc, run_process
from gossiplearn.sim.memory import run_memory
from gossiplearn.sim.report import human_bytes, plot_results, summary_table, write_results
from gossiplearn.sim.results import MethodResult


def run_experiment(
    config: SimConfig, out: Path, with_baselines: bool = True, console: Console | None = None
) -> list[MethodResult]:
    console = console or Console()
    # Peers log through our logger; the progress bar is the console's story here.
    logging.getLogger("gossiplearn").setLevel(logging.WARNING)
    started = time.perf_counter()
    shards = load_data(config)
    check_parts(config, shards)
    # In-process training (memory mode, baselines) on one thread, as each daemon trains by
    # default (training.threads = 1): these models are small, and a second OpenMP thread on a
    # busy 2-core machine spin-waits (memory mode, 10 peers x 5 rounds: 9.7 s with 2 threads,
    # 5.6 s with 1, while another process kept one core busy).
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(config, out, shards, with_baselines, console, started)
    finally:
        torch.set_num_threads(threads)


def _run(
    config: SimConfig,
    out: Path,
    shards: list[Any],
    with_baselines: bool,
    console: Console,
    started: float,
) -> list[MethodResult]:
    from gossiplearn.sim.baselines import run_fedavg, run_fedper, run_local_only

    methods: list[MethodResult] = []
    # --audit: each method hands over every peer's final model (a state_dict copy), audited
    # once the method is done (gossiplearn/sim/audit.py).
    final_states: list[dict[str, Any]] = []

    def keep_final(peer: int, model: Any) -> None:
        from gossiplearn.sim.audit import snapshot

        final_states.append(snapshot(model))

    keep = keep_final if config.audit else None

    def audit(method: MethodResult) -> MethodResult:
        if config.audit:
            from gossiplearn.sim.audit import audit_models, print_progress

            method.audit = audit_models(config, shards, final_states, method.name, print_progress)
            final_states.clear()
        return method

    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    # Audit progress goes to the real stderr, not through the bar's console (stdout).
    with Progress(*columns, console=console, redirect_stderr=False) as progress:
        task = progress.add_task("gossiplearn", total=config.rounds, detail="starting peers")

        def on_round(done: int, accuracy: float, sent: float) -> None:
            detail = f"mean acc {accuracy:.3f}  sent/peer {human_bytes(sent)}"
            progress.update(task, completed=min(done, config.rounds), detail=detail)

        if config.mode == "memory":
            methods.append(
                audit(run_memory(config, shards, on_round, final_models=keep, ray=config.ray))
            )
        elif config.ray:
            from gossiplearn.sim.ray_peers import run_ray_process

            methods.append(
                run_ray_process(
                    config,
                    out,
                    on_round,
                    address=config.ray,
                    peer_cpus=config.peer_cpus,
                    peer_gpus=config.peer_gpus,
                )
            )
        elif config.mode == "inproc":
            methods.append(run_inproc(config, out, on_round))
        else:
            methods.append(run_process(config, out, on_round))
        progress.update(task, completed=config.rounds)

        if with_baselines:
            factory, training = model_factory(config), train_config(config)
            make = trainer_factory(config)
            baselines: list[tuple[str, Callable[..., MethodResult]]] = [
                ("local", run_local_only),
                ("fedavg", run_fedavg),
                ("fedper", run_fedper),
            ]
            for name, run in baselines:
                baseline_task = progress.add_task(name, total=config.rounds, detail="")

                def on_baseline(_: str, index: int, task_id: TaskID = baseline_task) -> None:
                    progress.update(task_id, completed=index + 1)

                result = run(
                    shards,
                    factory,
                    training,
                    config.rounds,
                    seed=config.seed,
                    progress=on_baseline,
                    max_weight=config.max_weight,
                    make_trainer=make,
                    final_models=keep,
                )
                methods.append(audit(result))

    run_config = config.as_dict() | {"wall_s": round(time.perf_counter() - started, 3)}
    results = write_results(out, run_config, methods)
    data = config.data or f"{config.dataset}, {config.partition}"
    run_name = f"{data}, {config.peers} peers, {config.rounds} rounds, {config.mode} mode"
    plots = plot_results(out, methods, run_name)
    console.print(summary_table(methods))
    console.print(f"results: {results}")
    for plot in plots:
        console.print(f"plot:    {plot}")
    return methods
