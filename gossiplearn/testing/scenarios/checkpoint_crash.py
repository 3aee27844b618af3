"""Crash-safe checkpoints: kill -9 a process while it saves, the checkpoint is the old or the new.

Each trial starts a child that saves checkpoints in a loop into one directory (shared by all
trials, so leftovers of one kill meet the next trial's saves). Round k's checkpoint holds the
seeded initial backbone plus k and has ``rounds_completed = k``; the child logs "k digest" to a
per-trial file (fsynced) only after ``save_checkpoint`` returns. After a seeded random delay
the parent sends SIGKILL, then checks that ``load_checkpoint`` raises nothing and finds round
k_last (the last logged round, or the previous trial's round if none was logged: "old") or
k_last + 1 (the save in flight: "new"), with the digest the parent computes itself for that
round; "none" (no file) only while no save ever completed. The ``model.json`` sidecar, written
after the model, must hold the model's round, the one before, or (a kill between the model and
the sidecar of the child's first save) what it held before the trial. Finally the parent saves once
more and checks no temp file is left.

Kills are scheduled by trial number, with seeded random delays. Trials 0, 3, 6, ...
(IN_WRITE_EVERY): 0-5 ms after a new temp model file appears, mid-write, where a non-atomic
writer would tear the file; trial 0 so hits the first save into an empty directory. Trials 4,
9, 14, ... (EARLY_EVERY) unless already taken: 0-0.15 s after the child starts, before or
during its first save. The others: 0.05-1.5 s after the child's first logged save, anywhere in
the save cycle. Each child imports torch (~1.5 s of CPU) while the trial
before it runs; on 2 cores a trial costs ~1.7 s.

:func:`run_trials` returns a :class:`CrashReport` (benchmarks/checkpoint_crash_bench.py prints
it, 100 trials; tests/peer/learning/test_checkpoint_crash.py runs 16 on a smaller model). The
child is this module: ``python -m gossiplearn.testing.scenarios.checkpoint_crash --child DIR``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gossiplearn.fileio import TEMP_SUFFIX, temp_prefix
from gossiplearn.peer.learning.architectures import mlp
from gossiplearn.peer.learning.checkpoint import (
    MODEL_FILE,
    SIDECAR_FILE,
    CheckpointError,
    CheckpointMeta,
    load_checkpoint,
    save_checkpoint,
)
from gossiplearn.peer.learning.split_model import SplitModel

IN_WRITE_EVERY = 3
EARLY_EVERY = 5
EARLY_DELAY_S = (0.0, 0.15)
# The model's temp file lives ~5-15 ms (write, fsync) before it is renamed over.
IN_WRITE_DELAY_S = (0.0, 0.005)
LATE_DELAY_S = (0.05, 1.5)
# Children started ahead of their trial, so torch's import overlaps earlier trials.
SPARES = 1
WAIT_TIMEOUT_S = 30.0
MODEL_SEED = 0
#: Each trial's child: this module, run with ``--child``.
CHILD_MODULE = "gossiplearn.testing.scenarios.checkpoint_crash"


@dataclass
class CrashReport:
    """Outcome of :func:`run_trials`; every trial counts in exactly one of old/new/none/errors."""

    trials: int = 0
    old: int = 0
    new: int = 0
    none: int = 0
    killed_mid_write: int = 0
    model_bytes: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return len(self.failures)

    @property
    def loaded_ok(self) -> int:
        return self.old + self.new


def build_model(input_dim: int, hidden: Sequence[int]) -> SplitModel:
    """The seeded model every process builds identically (global RNG state left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(MODEL_SEED)
        return SplitModel(mlp(input_dim, tuple(hidden), 10))


class RoundModels:
    """Round k's weights (initial backbone + k), the same in the child and the parent."""

    def __init__(self, input_dim: int, hidden: Sequence[int]) -> None:
        self.model = build_model(input_dim, hidden)
        self._base = self.model.get_backbone()

    def set_round(self, k: int) -> SplitModel:
        self.model.set_backbone(self._base + k)
        return self.model

    def digest(self, k: int) -> str:
        return self.set_round(k).model_digest()


def child(directory: Path, log_path: Path, input_dim: int, hidden: Sequence[int]) -> None:
    """Save rounds k, k+1, ... forever (k read from stdin), logging each after its save."""
    rounds = RoundModels(input_dim, hidden)
    parent = os.getppid()
    print("ready", flush=True)
    line = sys.stdin.readline()
    if not line:
        return
    k = int(line)
    with open(log_path, "a") as log:
        # An orphan (parent gone) stops rather than write forever.
        while os.getppid() == parent:
            meta = CheckpointMeta(rounds_completed=k)
            save_checkpoint(directory, rounds.set_round(k), meta)
            log.write(f"{k} {meta.model_digest}\n")
            log.flush()
            os.fsync(log.fileno())
            k += 1


def _spawn(
    directory: Path, log_path: Path, input_dim: int, hidden: Sequence[int]
) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", CHILD_MODULE, "--child", str(directory)]
    command += ["--log", str(log_path), "--input-dim", str(input_dim)]
    command += ["--hidden", ",".join(map(str, hidden))]
    return subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _logged_rounds(log_path: Path) -> list[tuple[int, str]]:
    """The (k, digest) pairs of complete log lines."""
    text = log_path.read_text() if log_path.exists() else ""
    lines = text.split("\n")[:-1]  # the last piece is empty or an unfinished line
    return [(int(k), digest) for k, digest in (line.split() for line in lines)]


def _model_temp_files(directory: Path) -> set[str]:
    """Names of the model's temp files in ``directory`` (none if it does not exist)."""
    return {path.name for path in directory.glob(f"{temp_prefix(MODEL_FILE)}*{TEMP_SUFFIX}")}


def _sidecar_round(directory: Path) -> int:
    """The sidecar's round; 0 if there is no sidecar."""
    path = directory / SIDECAR_FILE
    return json.loads(path.read_text())["rounds_completed"] if path.exists() else 0


def _wait_until(process: subprocess.Popen[str], done: Callable[[], bool], what: str) -> str:
    """Poll until ``done()``; returns a problem if ``process`` keeps running without it."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while not done():
        if process.poll() is not None:
            return ""  # _kill reports the early exit
        if time.monotonic() > deadline:
            return f"no {what} within {WAIT_TIMEOUT_S:.0f} s"
        time.sleep(0.001)
    return ""


def _wait_for_kill_time(
    trial: int,
    rng: random.Random,
    process: subprocess.Popen[str],
    directory: Path,
    log: Path,
    temps_before: set[str],
) -> str:
    """Return when ``trial``'s kill is due (the schedule is in the module docstring).

    Returns a problem, or "". A save that never shows a temp file is one: it is not atomic.
    """
    problem = ""
    if trial % IN_WRITE_EVERY == 0:
        delay = rng.uniform(*IN_WRITE_DELAY_S)
        problem = _wait_until(
            process,
            lambda: bool(_model_temp_files(directory) - temps_before),
            f"temp {MODEL_FILE} file",
        )
    elif trial % EARLY_EVERY == EARLY_EVERY - 1:
        delay = rng.uniform(*EARLY_DELAY_S)
    else:
        delay = rng.uniform(*LATE_DELAY_S)
        problem = _wait_until(process, lambda: bool(_logged_rounds(log)), "save logged")
    time.sleep(delay)
    return problem


def _kill(process: subprocess.Popen[str]) -> str:
    """SIGKILL ``process`` if still running and reap it; returns a problem, or ""."""
    was_running = process.poll() is None
    if was_running:
        os.kill(process.pid, signal.SIGKILL)
    _, stderr = process.communicate()
    if was_running:
        return ""
    return f"child exited by itself with code {process.returncode}: {stderr.strip()[-2000:]}"


def _check(
    directory: Path, disk: SplitModel, rounds: RoundModels, k_last: int, sidecar_before: int
) -> tuple[int, list[str]]:
    """Check the directory after a kill; returns the round on disk (0: none) and problems.

    ``sidecar_before``: the sidecar's round before the trial's child started.
    """
    try:
        meta = load_checkpoint(directory, disk)
    except CheckpointError as exc:
        return 0, [f"load_checkpoint raised: {exc}"]
    k = meta.rounds_completed if meta is not None else 0
    problems = []
    if k not in (k_last, k_last + 1):
        problems.append(f"round {k} on disk, expected {k_last} (old) or {k_last + 1} (new)")
    if meta is not None:
        if meta.model_digest != rounds.digest(k):
            problems.append(f"round {k} on disk does not have round {k}'s digest")
        if disk.model_digest() != meta.model_digest:
            problems.append("the loaded model's digest differs from the checkpoint's")
    try:
        sidecar = _sidecar_round(directory)
    except (ValueError, KeyError) as exc:
        problems.append(f"{SIDECAR_FILE} is unreadable: {exc!r}")
    else:
        # Two kills in a row between a model and its sidecar leave the sidecar two saves back.
        if sidecar not in (k - 1, k, sidecar_before) or sidecar > k or (k == 0 and sidecar != 0):
            problems.append(f"{SIDECAR_FILE} holds round {sidecar}, the model round {k}")
    return k, problems


def run_trials(
    work_dir: Path,
    trials: int,
    seed: int = 0,
    input_dim: int = 784,
    hidden: Sequence[int] = (1024, 1024),
) -> CrashReport:
    """Run ``trials`` kill -9 trials in ``work_dir`` (checkpoints in its ``checkpoint``)."""
    started = time.perf_counter()
    rng = random.Random(seed)
    directory = work_dir / "checkpoint"
    logs = [work_dir / f"written-{trial}.log" for trial in range(trials)]
    rounds = RoundModels(input_dim, hidden)
    disk = build_model(input_dim, hidden)
    report = CrashReport(trials=trials)
    spares: collections.deque[subprocess.Popen[str]] = collections.deque()
    on_disk = 0  # round of the checkpoint on disk, 0: none
    try:
        for trial in range(trials):
            while len(spares) <= SPARES and trial + len(spares) < trials:
                spares.append(_spawn(directory, logs[trial + len(spares)], input_dim, hidden))
            process, log = spares[0], logs[trial]
            assert process.stdout is not None and process.stdin is not None
            if process.stdout.readline() != "ready\n":  # torch imported, model built
                spares.popleft()
                raise RuntimeError(f"a child did not start: {_kill(process)}")
            temps_before = _model_temp_files(directory)
            sidecar_before = _sidecar_round(directory)
            with contextlib.suppress(BrokenPipeError):  # a child that died: _kill reports it
                process.stdin.write(f"{on_disk + 1}\n")
                process.stdin.flush()
            due = _wait_for_kill_time(trial, rng, process, directory, log, temps_before)
            killed = _kill(spares.popleft())
            problems = [problem for problem in (due, killed) if problem]

            logged = _logged_rounds(log)
            k_last = logged[-1][0] if logged else on_disk
            if logged and logged[-1][1] != rounds.digest(k_last):
                problems.append(f"the child logged a wrong digest for round {k_last}")
            if _model_temp_files(directory) - temps_before:
                report.killed_mid_write += 1
            on_disk, check_problems = _check(directory, disk, rounds, k_last, sidecar_before)
            problems += check_problems
            if problems:
                report.failures.append(f"trial {trial}: " + "; ".join(problems))
                # Start the next trial from a known state.
                shutil.rmtree(directory, ignore_errors=True)
                on_disk = 0
            elif on_disk == 0:
                report.none += 1
            elif on_disk == k_last:
                report.old += 1
            else:
                report.new += 1
    finally:
        for process in spares:
            _kill(process)

    # The leftovers of the last kill must not break a save, and a save removes them.
    final = CheckpointMeta(rounds_completed=on_disk + 1)
    save_checkpoint(directory, rounds.set_round(final.rounds_completed), final)
    leftovers = sorted(path.name for path in directory.iterdir() if path.name.endswith(TEMP_SUFFIX))
    if leftovers:
        report.failures.append(f"temp files left after a clean save: {leftovers}")
    report.model_bytes = (directory / MODEL_FILE).stat().st_size
    report.seconds = time.perf_counter() - started
    return report


def _child_main() -> None:
    """The child's entry point (see :func:`child`)."""
    parser = argparse.ArgumentParser(description="a checkpoint saver, killed by its parent")
    parser.add_argument("--child", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--input-dim", type=int, required=True)
    parser.add_argument("--hidden", required=True)
    args = parser.parse_args()
    hidden = tuple(int(width) for width in args.hidden.split(","))
    child(args.child, args.log, args.input_dim, hidden)


if __name__ == "__main__":
    _child_main()
