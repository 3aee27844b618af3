"""Idle daemons' memory and start-up (gossiplearn/testing/scenarios/idle.py, benchmarks/
idle_bench.py's): three real peer processes on digits."""

from __future__ import annotations

import pytest

from gossiplearn.testing.scenarios.idle import idle_figures


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_three_idle_daemons_are_measured() -> None:
    line = idle_figures(peers=3, idle_s=1.0)
    assert (line["bench"], line["peers"]) == ("idle", 3)
    assert 0 < line["idle_rss_mb_median"] <= line["idle_rss_mb_max"]
    assert line["rss_anon_mb_max"] > 0 and line["rss_file_mb_max"] > 0
    assert 0 < line["startup_s_median"] <= line["startup_s_max"] <= line["ready_s"]
