"""Real daemons on 127.0.0.1, each with its own directory, admitting each other, in one of two
modes:

- ``process``: N ``gossiplearn run`` subprocesses: exactly what an organization runs (forked
  from a fork server that imported the daemon's modules once: :func:`fork_peer`).
- ``inproc``: N daemons (libp2p hosts and all) in one trio process.

Each returns a :class:`MethodResult` for "gossiplearn" with each peer's accuracy on its own
held-out data after each of its rounds, read from the peers' status documents. (The third
mode, ``memory``, is memory.py; the settings every mode shares, config.py.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import runpy
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gossiplearn.crypto.identity import Identity, write_key_file
from gossiplearn.peer.config import IDENTITY_FILE, PeerConfig, save_config
from gossiplearn.sim.config import (
    Progress,
    SimConfig,
    model_options,
    round_section,
    trainer_options,
)
from gossiplearn.sim.results import MethodResult
from gossiplearn.sim.steps import StepCounter
from gossiplearn.sim.stopping import raise_noted, stop_signals_noted, trio_stop_on_signals


def prepare_peers(
    out_dir: Path,
    config: SimConfig,
    places: Sequence[tuple[str, int, int]] | None = None,
    *,
    simulation: bool = False,
) -> list[Path]:
    """Create one peer directory per peer (identity, documented config), admitting each other.
    ``places``: each peer's (IP, libp2p port, status port) on the machine that will run it
    (``--ray``: see ray_peers.py); default: free ports on 127.0.0.1 here.

    ``simulation``: the settings of process mode's own peers, which nothing kills or
    restarts, each found where its time went (in config.toml; the daemon's code is the same):
    every other peer as a bootstrap peer while they fit the neighbour table (a round's members
    dial each other: one that knows no address of another yet aborts the round as
    member_unreachable, two such failures back a peer off, and it then trails the others to
    the last round); pings at the daemon's default 5 s (at 1 s, 9 new streams a second per
    peer, a sixth of a daemon's CPU); a checkpoint only when it stops (four fsyncs a round,
    holding the model, were a quarter of a daemon's time). Else the settings the test
    scenarios (churn, soak, faults) were built on: 3 bootstrap peers, peer exchange finding
    the rest, pings every second, a checkpoint after every round."""
    from gossiplearn.peer.net.ports import free_port
    from gossiplearn.sim.datasets import DATASETS

    peers_dir = out_dir / "peers"
    peers_dir.mkdir(parents=True, exist_ok=True)
    identities = [Identity.generate() for _ in range(config.peers)]
    if places is None:
        places = [("127.0.0.1", free_port(), free_port()) for _ in identities]
    hosts = [host for host, _, _ in places]
    ports = [port for _, port, _ in places]
    addresses = [
        f"/ip4/{host}/tcp/{port}/p2p/{identity.peer_id}"
        for host, port, identity in zip(hosts, ports, identities, strict=True)
    ]
    dirs = []
    for i, identity in enumerate(identities):
        directory = peers_dir / f"peer-{i}"
        directory.mkdir(exist_ok=True)
        write_key_file(directory / IDENTITY_FILE, identity)
        peer_config = PeerConfig()
        peer_config.peer.listen = [f"/ip4/{hosts[i]}/tcp/{ports[i]}"]
        peer_config.peer.allow = [other.peer_id for other in identities if other is not identity]
        max_neighbours = max(16, config.group_size * 2)
        everyone = simulation and config.peers <= max_neighbours
        steps = range(1, config.peers) if everyone else (1, 2, 3)
        neighbours = [(i + step) % config.peers for step in steps if step < config.peers]
        peer_config.peer.bootstrap = [addresses[j] for j in dict.fromkeys(neighbours) if j != i]
        if not simulation:
            peer_config.discovery.ping_interval_s = 1.0
        peer_config.discovery.max_neighbours = max_neighbours
        peer_config.round = round_section(config)
        if config.model:
            peer_config.model.factory = config.model
        peer_config.model.options = model_options(config)
        if config.data:
            peer_config.data.loader = "gossiplearn.sim.user:load_shard"
            peer_config.data.options = {
                "function": config.data,
                "peer": i,
                "peers": config.peers,
                "validation": config.validation,
                "seed": config.seed,
            }
            if config.data_options:
                peer_config.data.options["options"] = dict(config.data_options)
        else:
            peer_config.data.loader = DATASETS[config.dataset].loader
            peer_config.data.options = {
                "shard": f"{i}/{config.peers}",
                "partition": config.partition,
                "seed": config.seed,
                "holdout": config.holdout,
                "validation": config.validation,
            }
        training = peer_config.training
        training.trainer = config.trainer
        training.options = trainer_options(config, i)
        training.epochs = config.epochs
        training.steps_per_round = config.steps_per_round
        training.batch_size = config.batch_size
        training.lr = config.lr
        training.momentum = config.momentum
        training.head_epochs = config.head_epochs
        training.seed = config.seed
        training.acceptance = config.acceptance
        training.acceptance_tolerance = config.acceptance_tolerance
        training.acceptance_metric = config.acceptance_metric
        training.overlap = config.overlap
        training.local_reference = config.local_reference
        if simulation:
            training.checkpoint_every = 0
        if config.dp_epsilon:
            privacy = peer_config.privacy
            privacy.enabled = True
            privacy.epsilon = config.dp_epsilon
            privacy.delta = config.dp_delta
            privacy.max_grad_norm = config.dp_max_grad_norm
            privacy.rounds = config.rounds
        peer_config.status.port = places[i][2]
        save_config(directory, peer_config)
        dirs.append(directory)
    return dirs


def _fetch_status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as response:
            return dict(json.load(response))
    except (OSError, ValueError):
        return None


#: For its last rounds, process mode's launcher polls the daemons every 0.25 s, not 1 s.
LAST_ROUNDS = 2


def _budget_s(config: SimConfig, timeout_s: float | None) -> float:
    """How long Ray may take to place the daemons: start-up plus 30 s a round."""
    return timeout_s if timeout_s is not None else 120 + 30 * config.rounds


#: Real daemons are given up on once none of them made progress (answered its status for the
#: first time, finished a round) for this long. On a quiet machine 10 daemons start in 3-4 s
#: and a round takes under a second; beside six spinning processes on 2 cores (load 12-20) a
#: Ray run's six daemons needed over 200 s to start and finish 3 rounds. A fixed budget for the
#: whole run (it was 120 s + 30 s a round) cut such runs short although they were progressing;
#: a stall of 5 minutes with nothing finished anywhere is a sim that is stuck.
STALL_S = 300.0

log = logging.getLogger("gossiplearn.sim")


class Patience:
    """When to give up on real daemons: after ``stall_s`` without progress (see
    :data:`STALL_S`), or after ``timeout_s`` in all if one is given."""

    def __init__(self, stall_s: float = STALL_S, timeout_s: float | None = None) -> None:
        self.stall_s = stall_s
        self.began = self.progressed = time.monotonic()
        self.timeout_s = timeout_s
        self._seen: tuple[int, int] = (0, 0)

    def note(self, documents: Sequence[dict[str, Any] | None]) -> None:
        """Record the latest status documents (None: not answering yet)."""
        seen = (sum(d is not None for d in documents), sum(_rounds_done(documents)))
        if seen != self._seen:
            self._seen = seen
            self.progressed = time.monotonic()

    def _timed_out(self, now: float) -> bool:
        return self.timeout_s is not None and now - self.began >= self.timeout_s

    def expired(self) -> bool:
        now = time.monotonic()
        return self._timed_out(now) or now - self.progressed >= self.stall_s

    def gives_up(self, documents: Sequence[dict[str, Any] | None], rounds: int, logs: str) -> bool:
        """One poll of a launcher's loop: note ``documents``; if it is time to give up, say so
        (:meth:`gave_up`) and return True."""
        self.note(documents)
        if not self.expired():
            return False
        self.gave_up(documents, rounds, logs)
        return True

    def gave_up(self, documents: Sequence[dict[str, Any] | None], rounds: int, logs: str) -> None:
        """Say, in the log, why the run ends with peers short of rounds, and where the
        daemons' own logs are (``logs``)."""
        short = sum(done < rounds for done in _rounds_done(documents))
        if self._timed_out(time.monotonic()):
            why = f"the run's {self.timeout_s:g} s are up"
        else:
            why = f"no daemon started or finished a round for {self.stall_s:g} s"
        log.warning(
            "gave up on the daemons: %s; %d of %d peers are short of %d rounds (their logs: %s)",
            why,
            short,
            len(documents),
            rounds,
            logs,
        )


def _rounds_done(documents: Sequence[dict[str, Any] | None]) -> list[int]:
    """Rounds each peer has completed and taken in (a round counts as completed before its
    average is taken in and its history entry written: stopping on ``completed`` alone once
    left peers "short" of a round whose entry was a moment away)."""
    return [
        d["rounds"]["completed"] - d["rounds"].get("taking_in", 0) if d else 0 for d in documents
    ]


def _bytes_sent(document: dict[str, Any] | None) -> int:
    return sum(n["bytes_out"] for n in document["neighbours"]) if document else 0


def _accuracies_after(documents: Sequence[dict[str, Any] | None], round_: int) -> list[float]:
    """Each peer's accuracy after its ``round_``-th round (1-based), from its status history;
    a peer short of rounds gives its latest accuracy. The progress bar and the results table
    both read this, so they show the same figure."""
    row = []
    for document in documents:
        history = (document or {}).get("rounds", {}).get("history", [])
        if round_ >= 1 and round_ <= len(history):
            row.append(float(history[round_ - 1]["accuracy"]))
        elif history:
            row.append(float(history[-1]["accuracy"]))
        else:
            row.append(float((document or {}).get("accuracy") or 0.0))
    return row


def _report(
    documents: Sequence[dict[str, Any] | None], rounds: int, progress: Progress | None
) -> None:
    if progress is None:
        return
    done = min(min(_rounds_done(documents)), rounds)
    progress(
        done,
        float(np.mean(_accuracies_after(documents, done))),
        float(np.mean([_bytes_sent(d) for d in documents])),
    )


def _result_from_documents(
    documents: Sequence[dict[str, Any] | None],
    rounds: int,
    wall_s: float,
    steps: dict[str, float | None] | None = None,
    complete: bool = True,
) -> MethodResult:
    """Each peer's accuracy after each of its first ``rounds`` rounds (see
    _accuracies_after; a peer short of rounds is counted in ``extra``)."""
    histories = [(d or {}).get("rounds", {}).get("history", []) for d in documents]
    return MethodResult(
        "gossiplearn",
        [_accuracies_after(documents, r) for r in range(1, rounds + 1)],
        bytes_per_peer=float(np.mean([_bytes_sent(d) for d in documents])),
        wall_s=wall_s,
        extra={
            "peers_short_of_rounds": sum(len(h) < rounds for h in histories),
            **_epsilon_from_documents(documents),
        },
        steps_per_round=steps,
        complete=complete,
    )


def planned_steps(config: SimConfig, shards: Sequence[Any]) -> dict[str, float | None] | None:
    """The built-in trainer's optimizer steps per peer and round (its budget is fixed:
    ``--steps-per-round`` or ``--epochs`` epochs of batches, then ``--head-epochs`` epochs of
    the head after each average), the mean over the peers; None for a user's trainer, whose
    steps only it knows (counted where it trains in this process)."""
    if config.trainer:
        return None
    train = head = 0.0
    for data in shards:
        batches = math.ceil(len(data.train) / config.batch_size)
        train += config.steps_per_round or config.epochs * batches
        head += config.head_epochs * batches
    count = max(len(shards), 1)
    return {"train": train / count, "head": head / count, "total": (train + head) / count}


def _counted(
    counter: StepCounter, documents: Sequence[dict[str, Any] | None]
) -> dict[str, float | None]:
    """Inproc mode with a user's trainer: every step the daemons took, over the rounds they
    completed (train and head not told apart)."""
    completed = sum(len((d or {}).get("rounds", {}).get("history", [])) for d in documents)
    return {"train": None, "head": None, "total": counter.count / max(completed, 1)}


def _partial(
    on_result: Callable[[MethodResult], None] | None,
    documents: Sequence[dict[str, Any] | None],
    rounds: int,
    reported: list[int],
    started: float,
    steps: Callable[[], dict[str, float | None] | None],
) -> None:
    """``on_result`` with the rounds every peer has completed, once per new round."""
    if on_result is None:
        return
    done = min(min(_rounds_done(documents)), rounds)
    if done > reported[0]:
        reported[0] = done
        wall = time.perf_counter() - started
        on_result(_result_from_documents(documents, done, wall, steps(), complete=False))


def _epsilon_from_documents(documents: Sequence[dict[str, Any] | None]) -> dict[str, float]:
    spent = [((d or {}).get("privacy") or {}).get("epsilon_spent") for d in documents]
    known = [float(e) for e in spent if e is not None]
    if not known:
        return {}
    return {"epsilon_spent_mean": float(np.mean(known)), "epsilon_spent_max": max(known)}


def start_peer(directory: Path) -> subprocess.Popen[bytes]:
    """``gossiplearn run DIRECTORY`` as a subprocess, its output appended to
    DIRECTORY/stdout.log, in a session of its own: Ctrl-C reaches only the caller, which
    then stops its peers in order (:func:`_stop_all`)."""
    with open(directory / "stdout.log", "ab") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "gossiplearn.cli", "run", str(directory)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            start_new_session=True,
        )


#: What ``gossiplearn run`` imports before it serves (its command, torch, libp2p, the trainer,
#: the checkpoints, the built-in datasets): process mode imports them once, in a fork server,
#: and forks every daemon from it (:func:`fork_peer`). Ten daemons importing them each took
#: ~2.5 CPU-s apiece, the most of a simulation's start-up on two cores. Not gossiplearn.cli
#: itself: a child of the fork server first runs the launcher's main module as
#: ``__mp_main__`` (multiprocessing does), and runpy warns on stderr when that module (``python
#: -m gossiplearn.cli``) was imported already.
DAEMON_MODULES = [
    *(
        f"gossiplearn.commands.{name}"
        for name in ("allow", "audit", "common", "evidence", "init", "keys", "run", "sim", "status")
    ),
    "gossiplearn.peer.daemon",
    "gossiplearn.peer.learning.checkpoint",
    "gossiplearn.peer.learning.trainer",
    "gossiplearn.sim.datasets",
    "gossiplearn.sim.user",
    "libp2p",
]


class ForkedPeer:
    """A daemon forked from the fork server, as :class:`subprocess.Popen` is used here
    (``poll``, ``send_signal``, ``wait``, ``kill``, ``returncode``, ``pid``)."""

    def __init__(self, process: Any) -> None:
        self._process = process
        self.pid: int = process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def send_signal(self, signum: int) -> None:
        if self._process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def kill(self) -> None:
        self._process.kill()

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired("gossiplearn run", timeout or 0.0)
        return self._process.exitcode


def _run_forked(directory: str) -> None:
    """In a daemon forked from the fork server: ``python -m gossiplearn.cli run DIRECTORY``,
    the command's own code, its output appended to DIRECTORY/stdout.log, in a session of
    its own (as :func:`start_peer`)."""
    os.setsid()
    log = os.open(Path(directory) / "stdout.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the process's own
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.argv = ["gossiplearn", "run", directory]
    # As `python -m gossiplearn.cli` runs it: afresh, also where the launcher's main module
    # (the `gossiplearn` script, run again here by multiprocessing) imported it.
    sys.modules.pop("gossiplearn.cli", None)
    runpy.run_module("gossiplearn.cli", run_name="__main__", alter_sys=True)


def start_fork_server() -> None:
    """Start :func:`fork_peer`'s fork server now (it imports DAEMON_MODULES, seconds of CPU,
    while the caller goes on with its own start-up); the first fork_peer starts it
    otherwise."""
    from multiprocessing import forkserver

    forkserver.set_forkserver_preload(DAEMON_MODULES)
    forkserver.ensure_running()


def fork_peer(directory: Path) -> ForkedPeer:
    """``gossiplearn run DIRECTORY`` forked from a fork server that imported DAEMON_MODULES
    (multiprocessing's, started by the first call, with this process's environment and
    working directory): the daemon's code from its command line on, without importing it all
    again. As with any multiprocessing fork server, a script that calls this must guard its
    own code with ``if __name__ == "__main__":`` (each child runs the main module first)."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(DAEMON_MODULES)
    process = context.Process(
        target=_run_forked, args=(str(Path(directory).resolve()),), name="gossiplearn run"
    )
    process.start()
    return ForkedPeer(process)


def run_process(
    config: SimConfig,
    out_dir: Path,
    progress: Progress | None = None,
    timeout_s: float | None = None,
    on_result: Callable[[MethodResult], None] | None = None,
    steps: dict[str, float | None] | None = None,
) -> MethodResult:
    """N `gossiplearn run` subprocesses; stops them all (SIGTERM) when every peer has done
    ``config.rounds`` rounds, on timeout, or on Ctrl-C. ``on_result``: called with the
    result so far each time every peer has completed another round. ``steps``: the steps
    per peer and round to report (:func:`planned_steps`; the daemons' own are not seen)."""
    from gossiplearn.peer.config import load_config

    started = time.perf_counter()
    dirs = prepare_peers(out_dir, config, simulation=True)
    ports = [load_config(d).status.port for d in dirs]
    processes: list[subprocess.Popen[bytes] | ForkedPeer] = []
    documents: list[dict[str, Any] | None] = [None] * len(dirs)
    reported = [0]
    try:
        # Started one by one inside the try: a stop signal between two starts must still
        # stop the ones already running (they are in sessions of their own).
        for directory in dirs:
            processes.append(fork_peer(directory))
        patience = Patience(timeout_s=timeout_s)
        while True:
            for i, port in enumerate(ports):
                documents[i] = _fetch_status(port) or documents[i]
                if processes[i].poll() is not None:
                    raise RuntimeError(
                        f"peer {i} exited early (code {processes[i].returncode}); "
                        f"see {dirs[i] / 'stdout.log'}"
                    )
            # Reported before the check, so the bar's last figures are the table's (the same
            # documents), not the previous poll's.
            _report(documents, config.rounds, progress)
            _partial(on_result, documents, config.rounds, reported, started, lambda: steps)
            done = min(_rounds_done(documents))
            if done >= config.rounds:
                break
            if patience.gives_up(documents, config.rounds, f"{out_dir}/peers/*/logs/peer.log"):
                break
            # Every second (each poll asks every daemon for its whole status), and four times
            # as often for the last rounds: the run ends when the last peer is seen done.
            time.sleep(1.0 if done < config.rounds - LAST_ROUNDS else 0.25)
    finally:
        _stop_all(processes)
    return _result_from_documents(documents, config.rounds, time.perf_counter() - started, steps)


def _stop_all(
    processes: Sequence[subprocess.Popen[bytes] | ForkedPeer], grace_s: float = 10.0
) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_inproc(
    config: SimConfig,
    out_dir: Path,
    progress: Progress | None = None,
    timeout_s: float | None = None,
    on_result: Callable[[MethodResult], None] | None = None,
    steps: dict[str, float | None] | None = None,
) -> MethodResult:
    """N daemons (each its own libp2p host) in one trio process; stopped when every peer has
    done ``config.rounds`` rounds or on timeout. ``on_result``, ``steps``: as in
    :func:`run_process` (without ``steps``, every optimizer step of the daemons is counted
    here: the total per peer and round)."""
    import trio

    from gossiplearn.peer.daemon import Daemon

    started = time.perf_counter()
    dirs = prepare_peers(out_dir, config)
    patience = Patience(timeout_s=timeout_s)
    documents: list[dict[str, Any] | None] = [None] * len(dirs)
    reported = [0]
    counter = StepCounter()

    def steps_now() -> dict[str, float | None] | None:
        return steps if steps is not None else _counted(counter, documents)

    async def main(signals: list[int]) -> None:
        peers = [Daemon(d) for d in dirs]
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(peer.run, stop)
            with trio.CancelScope() as waiting:
                async with trio.open_nursery() as watch:
                    # SIGTERM or Ctrl-C ends the waiting; the peers then stop as at the end.
                    watch.start_soon(trio_stop_on_signals, signals, waiting)
                    while True:
                        await trio.sleep(1.0)
                        for i, peer in enumerate(peers):
                            if peer.ready:
                                documents[i] = peer.status_document()
                        _report(documents, config.rounds, progress)
                        _partial(on_result, documents, config.rounds, reported, started, steps_now)
                        if min(_rounds_done(documents)) >= config.rounds:
                            break
                        logs = f"{out_dir}/peers/inproc.log"
                        if patience.gives_up(documents, config.rounds, logs):
                            break
                    watch.cancel_scope.cancel()
            stop.set()

    from gossiplearn.peer import logfile

    # The peers' logs (libp2p's "Failed to open TCP stream" when one stops first, ...) go to
    # a file, not through the progress bar.
    handler = logfile.attach(out_dir / "peers" / "inproc.log")
    try:
        with stop_signals_noted() as signals, counter.counting():
            try:
                trio.run(main, signals)
            except BaseExceptionGroup as group:  # Ctrl-C before the watch began, wrapped
                if group.subgroup(KeyboardInterrupt) is None:
                    raise
                signals.append(signal.SIGINT)
    finally:
        logfile.detach(handler)
    raise_noted(signals)
    wall = time.perf_counter() - started
    return _result_from_documents(documents, config.rounds, wall, steps_now())
