"""benchmarks/privacy_bench.py prints one JSON line with accuracy and MIA AUC per method and
epsilon, and the DP cost and AUC reduction against no DP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "privacy_bench.py"
METHODS = {"gossiplearn", "local", "fedavg", "fedper"}


@pytest.mark.slow  # two simulations with audits, one under DP-SGD: 20-40 s
def test_privacy_bench_prints_one_json_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--peers", "3", "--rounds", "2", "--epsilons", "8,none"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    document = json.loads(lines[0])
    assert document["bench"] == "privacy"
    assert document["epsilons"] == ["8", "none"]
    for epsilon in ("8", "none"):
        runs = document["runs"][epsilon]
        assert set(runs) == METHODS
        for figures in runs.values():
            assert 0.0 <= figures["accuracy_min"] <= figures["accuracy_mean"] <= 1.0
            for key in ("auc_loss_mean", "auc_lira_mean", "auc_lira_max"):
                assert 0.0 <= figures[key] <= 1.0
    assert all(f["epsilon_spent_max"] <= 8.0 + 1e-6 for f in document["runs"]["8"].values())
    assert all(f["epsilon_spent_max"] is None for f in document["runs"]["none"].values())
    assert set(document["dp_cost_points"]["8"]) == METHODS
    assert set(document["auc_reduction"]["8"]) == METHODS
