"""The held-out check: a researcher's own task (tests/sim/research_task.py: next-character
prediction, an LSTM backbone, data and a trainer with options) through ``gossiplearn sim``
only, stopped half-way: results.json keeps the rounds completed and says it is incomplete,
and a signal is honoured even while the main thread is inside one long C call; real daemons
(process mode) stopped after a round keep it too."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gossiplearn.sim.report import validate_results
from gossiplearn.sim.stopping import GRACE_S

ROOT = Path(__file__).resolve().parents[2]
TASK = "tests.sim.research_task"


def start(out: Path, *args: str) -> subprocess.Popen[str]:
    """``gossiplearn sim`` on the task, from the repository's root (so ``tests`` imports),
    stdout to a pipe: not a terminal."""
    command = [
        sys.executable,
        "-m",
        "gossiplearn.cli",
        "sim",
        "--mode",
        "memory",
        "--peers",
        "4",
        "--seed",
        "1",
        "--model",
        f"{TASK}:model",
        "--model-option",
        "hidden=12",
        "--data",
        f"{TASK}:data",
        "--data-option",
        "lines=24",
        "--data-option",
        "shared=0.8",
        "--trainer",
        f"{TASK}:CharTrainer",
        "--trainer-option",
        "lr=0.02",
        "--trainer-option",
        "steps=2",
        "--out",
        str(out),
        *args,
    ]
    return subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(path: Path, process: subprocess.Popen[str], timeout_s: float = 180) -> None:
    """Until ``path`` exists (the trainer holds there); fail if the run ended first."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the run ended (code {process.returncode}) before holding: {err}{out}")
        assert time.monotonic() < deadline, "the trainer never reached its hold"
        time.sleep(0.05)


@pytest.mark.timeout(300)
def test_a_researchers_task_stopped_half_way_keeps_its_completed_rounds(tmp_path: Path) -> None:
    marker = tmp_path / "held"
    out = tmp_path / "out"
    # fedper's 6 rounds are peer 0's training calls 1-6; gossiplearn's third round is call 9.
    process = start(
        out,
        "--rounds",
        "6",
        "--methods",
        "fedper-plain,gossiplearn",
        "--trainer-option",
        "hold_at=9",
        "--trainer-option",
        f'marker="{marker}"',
    )
    try:
        wait_for(marker, process)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr
    assert "interrupted by SIGTERM" in stderr
    assert "kept what was written: results.json" in stderr
    # Plain progress lines, stdout being a pipe.
    assert "fedper-plain: round 6/6, mean accuracy" in stdout
    assert "gossiplearn: round 2/6, mean accuracy" in stdout
    document = json.loads((out / "results.json").read_text())
    validate_results(document)
    assert document["complete"] is False
    assert document["interrupted"] == "SIGTERM"
    fedper, gossip = document["methods"]["fedper-plain"], document["methods"]["gossiplearn"]
    assert (fedper["rounds_done"], fedper["complete"]) == (6, True)
    assert (gossip["rounds_done"], gossip["complete"]) == (2, False)
    assert len(gossip["accuracy_per_round"]) == 2
    assert gossip["final"] == gossip["accuracy_per_round"][-1]
    assert all(0 <= a <= 1 for a in gossip["final"])
    # Adam steps counted: 2 a round, and 2 for the head after each average in gossiplearn.
    assert fedper["steps_per_round"] == {"train": 2.0, "head": 0.0, "total": 2.0}
    assert gossip["steps_per_round"]["train"] == 2.0
    assert 0 < gossip["steps_per_round"]["head"] <= 2.0
    # What ran: the user's functions and options, not the built-in dataset's or MLP's.
    config = document["config"]
    assert config["model"] == f"{TASK}:model" and config["model_options"] == {"hidden": 12}
    assert config["data"] == f"{TASK}:data"
    assert config["data_options"] == {"lines": 24, "shared": 0.8}
    assert config["trainer"] == f"{TASK}:CharTrainer"
    assert config["trainer_options"]["steps"] == 2 and config["trainer_options"]["lr"] == 0.02
    assert config["validation"] == 0.1  # held out of the (train, test) the data returns
    assert config["methods"] == ["fedper-plain", "gossiplearn"]
    for absent in ("dataset", "partition", "holdout", "hidden", "dp_delta", "clip"):
        assert absent not in config, absent
    assert not (out / "peers").exists()


@pytest.mark.timeout(300)
def test_sigterm_is_honoured_while_the_main_thread_is_inside_a_long_c_call(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "held"
    release = Path(f"{marker}.release")
    out = tmp_path / "out"
    process = start(
        out,
        "--rounds",
        "4",
        "--methods",
        "gossiplearn",
        "--trainer-option",
        "hold_at=2",
        "--trainer-option",
        'hold="c"',
        "--trainer-option",
        f'marker="{marker}"',
    )
    try:
        wait_for(marker, process)
        # Round 1 was written before peer 0's second training call began.
        assert (
            json.loads((out / "results.json").read_text())["methods"]["gossiplearn"]["rounds_done"]
            == 1
        )
        process.send_signal(signal.SIGTERM)
        # The C call never returns until `release` exists: the run must end without it.
        stdout, stderr = process.communicate(timeout=120)
        assert not release.exists()
    finally:
        release.touch()  # lets the orphaned shell loop of system() end
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr
    assert (
        f"interrupted by SIGTERM; the run was stopped after {GRACE_S:g} s in a long call" in stderr
    )
    document = json.loads((out / "results.json").read_text())
    validate_results(document)
    assert (document["complete"], document["interrupted"]) == (False, "SIGTERM")
    gossip = document["methods"]["gossiplearn"]
    assert (gossip["rounds_done"], gossip["complete"]) == (1, False)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_process_mode_stopped_after_a_round_keeps_it(tmp_path: Path) -> None:
    """Real daemons: results.json is written once every peer has completed a round, and a
    SIGTERM after that keeps it, marked incomplete, while the peers' directories go."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "gossiplearn.cli", "sim", "--mode", "process", "--peers", "3",
               "--rounds", "1000", "--hidden", "16", "--no-baselines", "--out", str(out)]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    results = out / "results.json"
    try:
        wait_for(results, process)  # written after the first round every peer completed
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr
    assert "kept what was written: results.json (marked incomplete)" in stderr
    # A line per poll (1 s) that found more rounds completed by every peer.
    assert re.search(r"^gossiplearn: round \d+/1000, mean accuracy", stdout, re.MULTILINE)
    document = json.loads(results.read_text())
    validate_results(document)
    assert (document["complete"], document["interrupted"]) == (False, "SIGTERM")
    gossip = document["methods"]["gossiplearn"]
    assert gossip["rounds_done"] >= 1 and not gossip["complete"]
    assert gossip["steps_per_round"]["train"] > 0  # the built-in trainer's budget
    assert not (out / "peers").exists()
