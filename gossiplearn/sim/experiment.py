"""One simulation run end to end: split the data, run gossiplearn in the chosen mode and the
baselines on the same split and budget (``--methods``), writing results.json after every
round, then print the table and draw the plots."""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
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
from gossiplearn.sim.daemons import planned_steps, run_inproc, run_process
from gossiplearn.sim.memory import run_memory
from gossiplearn.sim.report import human_bytes, plot_results, summary_table, write_results
from gossiplearn.sim.results import MethodResult
from gossiplearn.sim.stopping import Terminated, honoured_within, signal_name


def run_experiment(
    config: SimConfig,
    out: Path,
    with_baselines: bool = True,
    console: Console | None = None,
    on_stuck: Callable[[str], None] | None = None,
) -> list[MethodResult]:
    """Run ``config.methods`` (``with_baselines=False``: gossiplearn alone), writing
    ``out/results.json`` after every round of every method; on SIGINT or SIGTERM it is
    written once more, marked interrupted, before the signal's exception goes on up.

    While training runs in this process (memory mode, the baselines), a signal the main
    thread cannot take within GRACE_S (it is inside one long C call) is acted on by a
    watcher thread (:func:`~gossiplearn.sim.stopping.honoured_within`): results.json is
    written, marked interrupted, then ``on_stuck("SIGTERM" or "SIGINT")`` ends the process
    (default: a line on stderr and ``os._exit`` with 143 or 130)."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file or a pipe: no need to fit 80 columns
            console = Console(width=160)
    if not with_baselines:
        config = replace(config, methods=("gossiplearn",))
    # Peers log through our logger; the progress bar is the console's story here.
    logging.getLogger("gossiplearn").setLevel(logging.WARNING)
    started = time.perf_counter()
    shards = load_data(config)
    check_parts(config, shards)
    config = with_weights(config, shards)
    # In-process training (memory mode, baselines) on one thread, as each daemon trains by
    # default (training.threads = 1): these models are small, and a second OpenMP thread on a
    # busy 2-core machine spin-waits (memory mode, 10 peers x 5 rounds: 9.7 s with 2 threads,
    # 5.6 s with 1, while another process kept one core busy).
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    recorder = Recorder(out, run_config(config, shards), started)

    def stuck(signum: int) -> None:
        name = signal_name(signum)
        recorder.write(interrupted=name, wait_s=1.0)
        if on_stuck is not None:
            on_stuck(name)
        else:
            sys.stderr.write(f"gossiplearn: interrupted by {name}; results.json kept\n")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signum)

    try:
        return _run(config, out, shards, console, recorder, stuck)
    except KeyboardInterrupt:
        recorder.write(interrupted="SIGINT")
        raise
    except Terminated:
        recorder.write(interrupted="SIGTERM")
        raise
    finally:
        torch.set_num_threads(threads)


def with_weights(config: SimConfig, shards: Sequence[Any]) -> SimConfig:
    """``--weight samples``: the cap set to the largest training set, so that every method
    weighs every peer by its samples, none capped."""
    if config.weight != "samples":
        return config
    from gossiplearn.protocol.messages import MAX_WEIGHT

    largest = max(len(data.train) for data in shards)
    return replace(config, max_weight=min(max(largest, 1), MAX_WEIGHT))


def run_config(config: SimConfig, shards: Sequence[Any]) -> dict[str, Any]:
    """results.json's ``config``: the options that applied to this run, under their
    SimConfig names. Left out: the built-in dataset, partition and holdout with ``--data``
    (and ``validation`` when the data brings its own validation sets), the MLP's ``hidden``
    with ``--model``, the options of parts not given, ``epochs`` with ``--steps-per-round``,
    the narrow ring's ``clip`` on the 32-bit ring, DP's and the audit's settings when off,
    and the daemons' pacing (``interval_s``, ``overlap``) in memory mode or without
    gossiplearn. ``max_weight`` is the cap every method ran with (``--weight samples``: the
    largest shard)."""
    from gossiplearn.sim.user import held_out

    document = config.as_dict()
    dropped: set[str] = set()
    if config.model:
        dropped |= {"hidden"}
    else:
        dropped |= {"model", "model_options"}
    if config.data:
        dropped |= {"dataset", "partition", "holdout"}
        if not any(held_out(data) for data in shards):
            dropped.add("validation")
    else:
        dropped |= {"data", "data_options"}
    if not config.trainer:
        dropped |= {"trainer", "trainer_options"}
    if config.steps_per_round:
        dropped.add("epochs")
    if config.ring_bits == 32:
        dropped.add("clip")
    if not config.dp_epsilon:
        dropped |= {"dp_epsilon", "dp_delta", "dp_max_grad_norm"}
    if not config.audit:
        dropped |= {"audit", "audit_references"}
    if config.mode == "memory" or "gossiplearn" not in config.methods:
        dropped |= {"interval_s", "overlap"}
    if "gossiplearn" not in config.methods:
        dropped |= {
            "mode",
            "group_size",
            "acceptance",
            "acceptance_tolerance",
            "acceptance_metric",
            "local_reference",
            "ring_bits",
            "clip",
        }
    return {key: value for key, value in document.items() if key not in dropped}


class Recorder:
    """``OUT/results.json`` as the run goes: the methods done, and the one running with the
    rounds it has completed, rewritten (atomically) after every round, unless writing would
    take more than :data:`MAX_SHARE` of the run's time (10,000 peers x 50 rounds: 15.6 MB,
    1.1 s a write; a round is then skipped if the last write took more than a tenth of the
    time since it). The end of a method, the end of the run and an interrupt always write."""

    #: The most of the run's wall time that rewriting results.json may take.
    MAX_SHARE = 0.1

    def __init__(self, out: Path, config: dict[str, Any], started: float) -> None:
        self.out = out
        self.config = config
        self.started = started
        self.done: list[MethodResult] = []
        self.current: MethodResult | None = None
        self._lock = threading.Lock()
        self._written_at = -math.inf
        self._write_s = 0.0

    def update(self, result: MethodResult) -> None:
        """``result`` (the running method) completed another round."""
        self.current = result
        if time.perf_counter() - self._written_at >= self._write_s / self.MAX_SHARE:
            self.write()

    def finish(self, result: MethodResult) -> None:
        self.current = None
        self.done.append(result)
        self.write()

    @property
    def methods(self) -> list[MethodResult]:
        running = [self.current] if self.current is not None and self.current.rounds_done else []
        return [*self.done, *running]

    def write(
        self, interrupted: str | None = None, complete: bool = False, wait_s: float = -1
    ) -> Path | None:
        """Write what there is (nothing before a method has completed a round). A stopped
        run's running method is marked incomplete. ``wait_s``: how long to wait for a write
        under way in another thread (-1: as long as it takes), else write nothing."""
        if not self._lock.acquire(timeout=wait_s):
            return None
        try:
            if interrupted and self.current is not None:
                self.current.complete = False
            methods = self.methods
            if not methods:
                return None
            began = time.perf_counter()
            wall = round(began - self.started, 3)
            path = write_results(
                self.out,
                self.config | {"wall_s": wall},
                methods,
                complete=complete,
                interrupted=interrupted,
            )
            self._written_at = time.perf_counter()
            self._write_s = self._written_at - began
            return path
        finally:
            self._lock.release()


def _run(
    config: SimConfig,
    out: Path,
    shards: list[Any],
    console: Console,
    recorder: Recorder,
    stuck: Callable[[int], None],
) -> list[MethodResult]:
    from gossiplearn.sim.baselines import run_baseline

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

            with honoured_within(stuck):
                method.audit = audit_models(
                    config, shards, final_states, method.name, print_progress
                )
            final_states.clear()
        return method

    with Reporter(console, config.rounds) as reporter:
        for name in config.methods:
            reporter.start(name)

            def on_result(result: MethodResult) -> None:
                # The line first: a run stopped once results.json holds a round has shown it.
                reporter.round(result)
                recorder.update(result)

            if name == "gossiplearn":
                on_round = reporter.on_round
                if config.mode == "memory":
                    with honoured_within(stuck):
                        result = run_memory(
                            config,
                            shards,
                            on_round,
                            final_models=keep,
                            on_result=on_result,
                            ray=config.ray,
                        )
                elif config.ray:  # process mode on a Ray cluster
                    from gossiplearn.sim.ray_peers import run_ray_process

                    result = run_ray_process(
                        config,
                        out,
                        on_round,
                        address=config.ray,
                        peer_cpus=config.peer_cpus,
                        peer_gpus=config.peer_gpus,
                        on_result=on_result,
                        steps=planned_steps(config, shards),
                    )
                elif config.mode == "inproc":
                    planned = planned_steps(config, shards)
                    result = run_inproc(config, out, on_round, on_result=on_result, steps=planned)
                else:
                    planned = planned_steps(config, shards)
                    result = run_process(config, out, on_round, on_result=on_result, steps=planned)
            else:
                with honoured_within(stuck):
                    result = run_baseline(
                        name,
                        shards,
                        model_factory(config),
                        train_config(config),
                        config.rounds,
                        seed=config.seed,
                        max_weight=config.max_weight,
                        make_trainer=trainer_factory(config),
                        final_models=keep,
                        eval_every=config.eval_every,
                        on_result=on_result,
                    )
            result.complete = True
            recorder.finish(audit(result))
            reporter.finish(result)

    methods = recorder.done
    results = recorder.write(complete=True)
    plots = plot_results(out, methods, run_title(config))
    console.print(summary_table(methods))
    console.print(f"results: {results}")
    for plot in plots:
        console.print(f"plot:    {plot}")
    return methods


class Reporter:
    """Progress: a bar per method on a terminal; elsewhere (output to a file or a pipe) one
    plain line per round of every method, so a log shows how far a run got."""

    def __init__(self, console: Console, rounds: int) -> None:
        self.console = console
        self.rounds = rounds
        self.bars: Progress | None = None
        self.task: TaskID | None = None
        self.name = ""
        self.started = 0.0
        self._reported = 0

    def __enter__(self) -> Reporter:
        if self.console.is_terminal:
            columns = (
                TextColumn("{task.description:<12}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
            )
            # Audit progress goes to the real stderr, not through the bar's console (stdout).
            self.bars = Progress(*columns, console=self.console, redirect_stderr=False)
            self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bars is not None:
            self.bars.__exit__(None, None, None)

    def start(self, name: str) -> None:
        self.name, self.started, self._reported = name, time.perf_counter(), 0
        detail = "starting peers" if name == "gossiplearn" else ""
        if self.bars is not None:
            self.task = self.bars.add_task(name, total=self.rounds, detail=detail)
        else:
            self._line(f"{name}: started, {self.rounds} rounds")

    def on_round(self, done: int, accuracy: float, sent: float) -> None:
        """gossiplearn's figures as the peers report them (process mode: every poll)."""
        if self.bars is not None and self.task is not None:
            shown = f"mean acc {accuracy:.3f}  " if math.isfinite(accuracy) else ""
            detail = f"{shown}sent/peer {human_bytes(sent)}"
            self.bars.update(self.task, completed=min(done, self.rounds), detail=detail)

    def round(self, result: MethodResult) -> None:
        """``result`` completed another round."""
        done = result.rounds_done
        if self.bars is not None and self.task is not None:
            if result.name != "gossiplearn":
                row = result.accuracy_per_round[-1] if done else []
                accuracy = _mean(row)
                detail = f"mean acc {accuracy:.3f}" if math.isfinite(accuracy) else ""
                self.bars.update(self.task, completed=min(done, self.rounds), detail=detail)
            return
        if done <= self._reported:
            return
        self._reported = done
        accuracy = _mean(result.accuracy_per_round[-1])
        shown = f"{100 * accuracy:.1f}%" if math.isfinite(accuracy) else "not evaluated"
        sent = f", sent/peer {human_bytes(result.bytes_per_peer)}" if result.bytes_per_peer else ""
        elapsed = time.perf_counter() - self.started
        self._line(
            f"{result.name}: round {done}/{self.rounds}, mean accuracy {shown}{sent}, {elapsed:.1f} s"
        )

    def finish(self, result: MethodResult) -> None:
        if self.bars is not None and self.task is not None:
            self.bars.update(self.task, completed=self.rounds)
        else:
            self._line(f"{result.name}: done in {result.wall_s:.1f} s")

    def _line(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)
        self.console.file.flush()


def _mean(row: Sequence[float]) -> float:
    values = np.asarray(row, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def run_title(config: SimConfig) -> str:
    """What the plots are titled with: the data, the scale, the mode, and DP if it was on
    (every method then trained under it, which the accuracies cannot be read without)."""
    data = config.data or f"{config.dataset}, {config.partition}"
    title = f"{data}, {config.peers} peers, {config.rounds} rounds, {config.mode} mode"
    if config.dp_epsilon:
        title += f", DP epsilon {config.dp_epsilon:g} (delta {config.dp_delta:g})"
    return title
