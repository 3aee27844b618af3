"""Honest rounds per minute under one insider (gossiplearn/testing/scenarios/insider.py,
benchmarks/insider_bench.py's), briefly: a control run and the spoiler, 10 s each, rounds
every ~0.5 s. (tests/peer/net/test_insider_live.py tests each attack class's defence.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from gossiplearn.testing.scenarios.insider import ATTACKS, insider_figures


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_honest_rounds_go_on_while_a_spoiler_is_singled_out(tmp_path: Path) -> None:
    # Each run ends on the counts asserted below (2 honest rounds; in the attack run, also an
    # honest peer backing the spoiler off), 90 s being only the bound a loaded machine may need.
    line = insider_figures(tmp_path, ["spoiling"], seconds=90.0, interval_s=0.5, min_rounds=2)
    assert (line["seconds"], line["interval_s"]) == (90.0, 0.5)
    assert line["control_rounds_per_min"] > 0
    spoiling = line["spoiling"]
    assert spoiling["rounds_per_min"] > 0 and spoiling["ratio"] is not None
    assert spoiling["proofs_against_honest"] == 0
    # Its garbage shows as implausible averages nobody is struck for, and group testing
    # singles it out: at least one honest peer backs it off.
    assert set(spoiling["honest_aborts"]) <= {"implausible_average", "peer_aborted"}
    assert spoiling["insider_blocked_by"] >= 1, spoiling


def test_unknown_attack_classes_are_refused(tmp_path: Path) -> None:
    assert "none" in ATTACKS and "spoiling" in ATTACKS
    with pytest.raises(ValueError, match="attack must be one of"):
        insider_figures(tmp_path, ["nonsense"], seconds=1.0)
