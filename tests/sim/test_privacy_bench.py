"""The privacy scenario (gossiplearn/testing/scenarios/privacy.py, benchmarks/privacy_bench.py's):
accuracy and MIA AUC per method and epsilon, and the DP cost and AUC reduction against no DP,
in a JSON-ready line."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from gossiplearn.testing.scenarios.privacy import PrivacyOptions, privacy_figures

METHODS = {"gossiplearn", "local", "fedavg", "fedper"}


@pytest.mark.slow  # two simulations with audits, one under DP-SGD: 20-40 s
def test_privacy_bench_prints_one_json_line() -> None:
    tables = io.StringIO()
    options = PrivacyOptions(peers=3, rounds=2, epsilons=("8", "none"))
    line = json.dumps(privacy_figures(options, Console(file=tables)))
    assert "\n" not in line
    document = json.loads(line)
    assert "epsilon 8" in tables.getvalue()  # the simulations' tables went there
    assert document["bench"] == "privacy"
    assert (document["peers"], document["rounds"], document["dataset"]) == (3, 2, "digits")
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
    assert set(document["dp_cost_points"]) == set(document["auc_reduction"]) == {"8"}
    assert set(document["dp_cost_points"]["8"]) == METHODS
    assert set(document["auc_reduction"]["8"]) == METHODS
