"""Churn: 8 real peer daemons on 127.0.0.1, one killed with SIGKILL every 10 s and restarted
3 s later, for 90 s; then the same network without faults, for comparison.

The scenario is gossiplearn/testing/scenarios/churn.py (benchmarks/churn_bench.py runs 16 peers,
a kill every 30 s, for 5 minutes). One churn run and one fault-free run (a module fixture,
about 4 minutes on 2 cores) feed every test below.
"""

from __future__ import annotations

from typing import Any

import pytest

from gossiplearn.testing.scenarios.churn import ChurnConfig, run_churn

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    config = ChurnConfig(peers=8, duration_s=90, kill_every_s=10, restart_delay_s=3)
    return dict(run_churn(tmp_path_factory.mktemp("churn"), config, fault_free=True))


def test_no_survivor_crashes(report: dict[str, Any]) -> None:
    assert report["survivor_crashes"] == 0, report["crashed"]
    assert report["survivor_crashes_fault_free"] == 0


def test_no_round_is_stuck_past_its_deadline(report: dict[str, Any]) -> None:
    assert report["stuck_rounds"] == 0, report["max_overrun_s"]


def test_every_restarted_peer_resumes_from_its_checkpoint(report: dict[str, Any]) -> None:
    # A kill every 10 s from +10 s until a restart delay before the end of 90 s.
    assert report["kills"] == report["restarts"] >= 8
    assert report["resume_failures"] == []
    assert report["resumed_from_checkpoint"] == report["restarted_with_checkpoint"]
    # Warm-up waits for every peer's first round, so every victim has a checkpoint.
    assert report["restarted_with_checkpoint"] == report["restarts"]


def test_rounds_go_on_under_churn(report: dict[str, Any]) -> None:
    assert report["rounds_churn"] > 0.25 * report["rounds_fault_free"]


def test_final_accuracy_is_within_two_points_of_the_fault_free_run(
    report: dict[str, Any],
) -> None:
    assert report["accuracy_gap_pts"] <= 2.0, report
