"""Crash-safe checkpoints: kill -9 during saves leaves a checkpoint that loads, old or new.

The harness (child saver, kill schedule, checks) lives in benchmarks/checkpoint_crash_bench.py,
which runs 100 trials; this test runs fewer on a smaller model. It is loaded by path because
benchmarks/ is not a package, and a real script file lets the child run as ``python FILE``
instead of as untyped, unlinted ``python -c`` source.
"""

import pytest

from tests.bench import load_bench

TRIALS = 16


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_9_during_saves_leaves_the_old_or_the_new_checkpoint(tmp_path):
    bench = load_bench("checkpoint_crash_bench")

    report = bench.run_trials(tmp_path, TRIALS, seed=20240607, input_dim=256, hidden=(256, 256))

    assert report.failures == []
    assert report.old + report.new + report.none == TRIALS
    # A third of the kills are aimed at the write; some must land there, or this proves little.
    assert report.killed_mid_write > 0, report
