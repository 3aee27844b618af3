"""A neighbour whose clock is 60 s off: the others estimate its offset from pings, flag it
(status, waiting, metrics), and never invite it, while their own rounds go on. The scenario is
gossiplearn/testing/scenarios/skew.py (benchmarks/hostile_bench.py ``--skew``)."""

from __future__ import annotations

import logging

import pytest
import trio

from gossiplearn.testing.scenarios.skew import clock_skew_scenario

SKEW_S = 60.0
SECONDS = 10.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_neighbour_with_a_skewed_clock_is_flagged_and_never_invited(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gossiplearn")
    result = trio.run(clock_skew_scenario, tmp_path, SKEW_S, SECONDS)
    assert result["crashed"] == 0 and result["stopped_cleanly"]
    # Each honest peer estimates +60 s to within a few ms (the error is at most RTT/2).
    assert all(abs(e - SKEW_S) < 0.5 for e in result["estimated_offset_s"]), result
    assert all(t is not None for t in result["flagged_after_s"]), result
    assert result["invitations_naming_skewed"] == 0, result  # once flagged, never invited
    assert result["invitations_without_it"] >= 3, result
    assert min(result["honest_rounds_completed"]) >= 1, result
    assert result["waiting_causes_about_it"] == [["clock_skew"]] * 3
    # Logged once per honest peer, not once per ping or per round.
    skew_lines = [
        r for r in caplog.records if "is +" in r.getMessage() and "off ours" in r.getMessage()
    ]
    assert len(skew_lines) == 3, [r.getMessage() for r in skew_lines]
