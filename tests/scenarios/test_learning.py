"""The learning and scale scenarios (gossiplearn/testing/scenarios/learning.py, which
benchmarks/learning_bench.py and scale_bench.py run), small: digits with 3 peers, synthetic
data with 8."""

from __future__ import annotations

import dataclasses
import json

import pytest

from gossiplearn.testing.scenarios.learning import (
    LearningOptions,
    learning_figures,
    run_gossiplearn,
    scale_figures,
)

SMALL = LearningOptions(dataset="digits", checkpoints=(1, 2), hidden=(16,), group_size=3)
METHODS = {"gossiplearn_memory", "local", "fedavg", "fedper"}


def test_learning_figures_compare_every_method_at_every_checkpoint() -> None:
    line = json.loads(json.dumps(learning_figures(3, SMALL)))
    assert (line["bench"], line["dataset"], line["peers"], line["rounds"]) == (
        "learning",
        "digits",
        3,
        [1, 2],
    )
    assert set(line["accuracy"]) == METHODS
    for checkpoints in line["accuracy"].values():
        assert set(checkpoints) == {"1", "2"}
        for figures in checkpoints.values():
            assert 0.0 <= figures["min"] <= figures["p10"] <= figures["mean"] <= 1.0
    targets = line["targets"]["gossiplearn_memory"]
    assert set(targets["2"]) == {
        "mean_vs_fedper_minus_0.5",
        "worst_vs_min_worst_minus_1",
        "sim_target",
    }
    assert line["bytes_per_peer"]["gossiplearn_memory"] > 0


def test_a_poisoned_run_is_judged_on_the_honest_peers() -> None:
    options = dataclasses.replace(SMALL, checkpoints=(2,), poison="zero")
    targets = learning_figures(3, options)["targets"]["gossiplearn_memory"]
    assert isinstance(targets["honest_worst_gap_to_local"], float)
    assert isinstance(targets["no_honest_peer_1_point_below_local"], bool)


def test_poison_runs_in_memory_mode_only() -> None:
    with pytest.raises(ValueError, match="poison must be one of"):
        learning_figures(3, dataclasses.replace(SMALL, poison="nonsense"))
    config = dataclasses.replace(SMALL.config(3), mode="process")
    with pytest.raises(ValueError, match="memory mode only"):
        run_gossiplearn(config, shards=[], poison="zero")


def test_scale_figures_of_a_small_network() -> None:
    line = scale_figures(peers=8, rounds=2, group_size=4)
    assert (line["bench"], line["peers"], line["rounds"], line["dataset"]) == (
        "scale",
        8,
        2,
        "synthetic",
    )
    assert line["rounds_aborted"] == 0
    assert 0.0 <= line["mean_accuracy"] <= 1.0 and line["bytes_per_peer"] > 0
    assert line["peak_rss_mb"] > 0
