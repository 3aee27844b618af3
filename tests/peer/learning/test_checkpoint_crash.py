"""Crash-safe checkpoints: kill -9 during saves leaves a checkpoint that loads, old or new.

The harness (child saver, kill schedule, checks) is gossiplearn/testing/scenarios/
checkpoint_crash.py, which benchmarks/checkpoint_crash_bench.py runs with 100 trials; this test
runs fewer on a smaller model. Each child runs that module (``python -m ... --child``).
"""

import pytest

from gossiplearn.testing.scenarios.checkpoint_crash import run_trials

TRIALS = 16


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_9_during_saves_leaves_the_old_or_the_new_checkpoint(tmp_path):
    report = run_trials(tmp_path, TRIALS, seed=20240607, input_dim=256, hidden=(256, 256))

    assert report.failures == []
    assert report.old + report.new + report.none == TRIALS
    # A third of the kills are aimed at the write; some must land there, or this proves little.
    assert report.killed_mid_write > 0, report
