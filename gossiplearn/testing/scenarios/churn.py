"""Churn: real peer daemons on 127.0.0.1; every K seconds one is killed with SIGKILL and
restarted after a delay. Compared with a fault-free run of the same network and seed.

Each run prepares N peer directories with sim/daemons.py's prepare_peers (the digits dataset split
Dirichlet(0.3), the same seed in both runs), starts N ``gossiplearn run`` processes, waits
until every peer has finished a round (warm-up), and then runs for ``duration_s`` seconds,
polling every peer's ``/status`` every ``POLL_S``. In the churn run, every ``kill_every_s``
seconds a random running peer gets SIGKILL (no stop, no last checkpoint); the checkpoint it
leaves on disk is read (header only), and ``restart_delay_s`` later the same directory is
started again. The last kill comes a restart delay before the end; the run then waits until
every killed peer is back and its resume is checked, and takes the final figures.

Figures (:func:`run_churn`'s report; benchmarks/churn_bench.py prints it, tests/sim/
test_churn.py runs 8 peers for 90 s):

- ``survivor_crashes``: peer processes that exited although nobody killed them. Must be 0.
- ``stuck_rounds``: rounds seen in progress more than ``STUCK_GRACE_S`` past their own
  deadline (``rounds.current.deadline_in_s`` in /status). Must be 0. ``max_overrun_s`` is
  the latest past its deadline any round was seen (negative: every round seen was within it).
- ``kills``, ``restarts``, ``restarted_with_checkpoint`` and ``resumed_from_checkpoint``: a
  restarted daemon's ``resumed_from`` must name the round count and model digest of the
  checkpoint its predecessor left (a peer killed before its first checkpoint must start
  fresh, counted in ``restarted_fresh``). All restarts must resume.
- ``accuracy_churn`` / ``accuracy_fault_free``: the mean over peers of each peer's accuracy
  on its own held-out data at the end; ``accuracy_gap_pts`` = fault-free minus churn, in
  points. Must be at most 2.
- ``rounds_churn`` / ``rounds_fault_free``: rounds completed during the measured period,
  summed over peers; ``aborts_churn`` with ``abort_reasons_churn``.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gossiplearn.peer.config import CHECKPOINT_DIR, load_config, save_config
from gossiplearn.peer.learning.checkpoint import read_checkpoint_meta
from gossiplearn.sim.config import SimConfig
from gossiplearn.sim.daemons import _fetch_status, _stop_all, prepare_peers, start_peer

POLL_S = 0.5
#: A round's deadline fires a tick in the engine, which aborts it in a worker thread. With
#: 16 processes on 2 cores scheduling is slow, so a round counts as stuck only this late.
STUCK_GRACE_S = 5.0
#: Start-up of N processes that each import torch and libp2p, plus a first round each.
WARMUP_BUDGET_S = 240.0
#: How long a restarted daemon may take to serve /status again before we call it lost.
RESTART_BUDGET_S = 90.0
MAX_GAP_PTS = 2.0


@dataclass(frozen=True)
class ChurnConfig:
    peers: int = 16
    duration_s: float = 300.0
    kill_every_s: float = 30.0
    restart_delay_s: float = 10.0
    seed: int = 0
    #: A digits round takes well under a second here; 20 s leaves a slow 2-core machine room
    #: while a group waiting on a dead member frees itself in reasonable time.
    round_timeout_s: float = 20.0
    interval_s: float = 1.0


@dataclass
class RunFigures:
    churn: bool
    survivor_crashes: int = 0
    crashed: list[str] = field(default_factory=list)
    stuck_rounds: int = 0
    max_overrun_s: float = -float("inf")
    kills: int = 0
    restarts: int = 0
    restarted_with_checkpoint: int = 0
    restarted_fresh: int = 0
    resumed_from_checkpoint: int = 0
    resume_failures: list[str] = field(default_factory=list)
    accuracy: float = 0.0
    rounds_completed: int = 0
    rounds_aborted: int = 0
    abort_reasons: Counter[str] = field(default_factory=Counter)
    warmup_s: float = 0.0
    wall_s: float = 0.0


class Fleet:
    """N ``gossiplearn run`` processes, one per prepared directory."""

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = dirs
        self.ports = [load_config(d).status.port for d in dirs]
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * len(dirs)

    def start(self, i: int) -> None:
        self.processes[i] = start_peer(self.dirs[i])

    def kill(self, i: int) -> None:
        process = self.processes[i]
        assert process is not None
        process.send_signal(signal.SIGKILL)
        process.wait()
        self.processes[i] = None

    def running(self) -> list[int]:
        return [i for i, p in enumerate(self.processes) if p is not None]

    def reap_crashed(self) -> list[int]:
        """Peers whose process exited on its own (nobody killed it): crashes."""
        crashed = []
        for i, process in enumerate(self.processes):
            if process is not None and process.poll() is not None:
                crashed.append(i)
                self.processes[i] = None
        return crashed

    def status(self, i: int) -> dict[str, Any] | None:
        return _fetch_status(self.ports[i]) if self.processes[i] is not None else None

    def stop(self) -> None:
        _stop_all([p for p in self.processes if p is not None])
        self.processes = [None] * len(self.dirs)


def prepare(directory: Path, config: ChurnConfig) -> list[Path]:
    sim = SimConfig(
        peers=config.peers, dataset="digits", seed=config.seed, interval_s=config.interval_s
    ).validate()
    dirs = prepare_peers(directory, sim)
    for d in dirs:
        peer_config = load_config(d)
        peer_config.round.round_timeout_s = config.round_timeout_s
        save_config(d, peer_config)
    return dirs


def run_network(
    directory: Path,
    config: ChurnConfig,
    churn: bool,
    say: Callable[[str], None] = lambda message: None,
) -> RunFigures:
    """One run: warm up, then ``config.duration_s`` of polling, with kills if ``churn``."""
    figures = RunFigures(churn=churn)
    started = time.monotonic()
    fleet = Fleet(prepare(directory, config))
    rng = random.Random(config.seed)
    n = config.peers
    latest: list[dict[str, Any] | None] = [None] * n
    try:
        for i in range(n):
            fleet.start(i)
        # Warm-up: every peer serving and past its first round.
        deadline = time.monotonic() + WARMUP_BUDGET_S
        while True:
            _poll(fleet, latest, figures)
            done = [d["rounds"]["completed"] if d else -1 for d in latest]
            if min(done) >= 1:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"warm-up: rounds per peer after {WARMUP_BUDGET_S:.0f}s: {done}")
            time.sleep(POLL_S)
        figures.warmup_s = time.monotonic() - started
        at_start = [d["rounds"]["completed"] for d in latest if d]
        say(f"{'churn' if churn else 'fault-free'}: warm after {figures.warmup_s:.0f}s")

        t0 = time.monotonic()
        end = t0 + config.duration_s
        next_kill = t0 + config.kill_every_s
        last_kill = end - config.restart_delay_s
        restart_at: dict[int, tuple[float, Any]] = {}  # peer -> (when, checkpoint meta)
        awaiting_resume: dict[int, tuple[float, Any]] = {}  # peer -> (since, checkpoint meta)
        next_report = t0 + 30
        while time.monotonic() < end or restart_at or awaiting_resume:
            now = time.monotonic()
            if churn and now >= next_kill and now <= last_kill:
                candidates = [i for i in fleet.running() if i not in awaiting_resume]
                if candidates:
                    victim = rng.choice(candidates)
                    fleet.kill(victim)
                    figures.kills += 1
                    meta = read_checkpoint_meta(fleet.dirs[victim] / CHECKPOINT_DIR)
                    restart_at[victim] = (now + config.restart_delay_s, meta)
                    latest[victim] = None
                    say(f"killed peer-{victim} at +{now - t0:.0f}s")
                next_kill += config.kill_every_s
            for i, (when, meta) in list(restart_at.items()):
                if now >= when:
                    fleet.start(i)
                    figures.restarts += 1
                    del restart_at[i]
                    awaiting_resume[i] = (now, meta)
            _poll(fleet, latest, figures)
            for i, (since, meta) in list(awaiting_resume.items()):
                document = latest[i]
                if document is not None:
                    del awaiting_resume[i]
                    _check_resume(i, document, meta, figures)
                elif now - since > RESTART_BUDGET_S:
                    del awaiting_resume[i]
                    figures.resume_failures.append(f"peer-{i}: not serving after restart")
            if now >= next_report:
                rounds = sum(d["rounds"]["completed"] for d in latest if d)
                say(f"+{now - t0:.0f}s: {rounds} rounds, {len(fleet.running())}/{n} running")
                next_report += 30
            time.sleep(POLL_S)

        final = [fleet.status(i) for i in range(n)]
        missing = [f"peer-{i}" for i, d in enumerate(final) if d is None]
        if missing:
            raise RuntimeError(f"no final status from {', '.join(missing)}")
        documents = [d for d in final if d is not None]
        figures.accuracy = sum(d["accuracy"] for d in documents) / n
        figures.rounds_completed = sum(
            d["rounds"]["completed"] - before for d, before in zip(documents, at_start, strict=True)
        )
        for d in documents:
            figures.abort_reasons.update(d["rounds"]["abort_reasons"])
        figures.rounds_aborted = sum(figures.abort_reasons.values())
    finally:
        fleet.stop()
    figures.wall_s = time.monotonic() - started
    return figures


def _poll(fleet: Fleet, latest: list[dict[str, Any] | None], figures: RunFigures) -> None:
    for i in fleet.reap_crashed():
        figures.survivor_crashes += 1
        figures.crashed.append(f"peer-{i}")
    for i in fleet.running():
        document = fleet.status(i)
        if document is None:
            continue
        latest[i] = document
        current = document["rounds"]["current"]
        if current is not None:
            overrun = -float(current["deadline_in_s"])
            figures.max_overrun_s = max(figures.max_overrun_s, overrun)
            if overrun > STUCK_GRACE_S:
                figures.stuck_rounds += 1


def _check_resume(i: int, document: dict[str, Any], meta: Any, figures: RunFigures) -> None:
    resumed = document.get("resumed_from")
    if meta is None:
        figures.restarted_fresh += 1
        if resumed is not None:
            figures.resume_failures.append(f"peer-{i}: resumed {resumed} but had no checkpoint")
        return
    figures.restarted_with_checkpoint += 1
    expected = {"rounds_completed": meta.rounds_completed, "model_digest": meta.model_digest}
    if resumed is not None and all(resumed.get(k) == v for k, v in expected.items()):
        figures.resumed_from_checkpoint += 1
    else:
        figures.resume_failures.append(f"peer-{i}: resumed {resumed}, checkpoint {expected}")


def run_churn(
    directory: Path,
    config: ChurnConfig,
    fault_free: bool = True,
    say: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    churned = run_network(directory / "churn", config, churn=True, say=say)
    report: dict[str, Any] = {
        "peers": config.peers,
        "duration_s": config.duration_s,
        "kill_every_s": config.kill_every_s,
        "restart_delay_s": config.restart_delay_s,
        "seed": config.seed,
        "survivor_crashes": churned.survivor_crashes,
        "stuck_rounds": churned.stuck_rounds,
        "max_overrun_s": round(churned.max_overrun_s, 3),
        "kills": churned.kills,
        "restarts": churned.restarts,
        "restarted_with_checkpoint": churned.restarted_with_checkpoint,
        "restarted_fresh": churned.restarted_fresh,
        "resumed_from_checkpoint": churned.resumed_from_checkpoint,
        "resume_failures": churned.resume_failures,
        "accuracy_churn": round(churned.accuracy, 4),
        "rounds_churn": churned.rounds_completed,
        "aborts_churn": churned.rounds_aborted,
        "abort_reasons_churn": dict(churned.abort_reasons),
        "crashed": churned.crashed,
        "wall_s_churn": round(churned.wall_s, 1),
    }
    if fault_free:
        clean = run_network(directory / "fault-free", config, churn=False, say=say)
        report.update(
            accuracy_fault_free=round(clean.accuracy, 4),
            accuracy_gap_pts=round(100 * (clean.accuracy - churned.accuracy), 2),
            rounds_fault_free=clean.rounds_completed,
            aborts_fault_free=clean.rounds_aborted,
            survivor_crashes_fault_free=clean.survivor_crashes,
            stuck_rounds_fault_free=clean.stuck_rounds,
            wall_s_fault_free=round(clean.wall_s, 1),
        )
    report["ok"] = (
        churned.survivor_crashes == 0
        and churned.stuck_rounds == 0
        and not churned.resume_failures
        and churned.resumed_from_checkpoint == churned.restarted_with_checkpoint
        and (not fault_free or report["accuracy_gap_pts"] <= MAX_GAP_PTS)
    )
    return report
