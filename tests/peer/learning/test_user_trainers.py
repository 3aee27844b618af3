"""A user's trainer in the daemon (``training.trainer``): a regression with MSE and a
multi-label classification with binary cross-entropy, each its own Adam loop, run by real
daemons over libp2p. Rounds complete, personal acceptance decides on the metric the config
names, members that applied an average share one backbone, and the model learns."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from gossiplearn.peer.config import load_config, save_config
from gossiplearn.testing.cluster import paused, prepare, running

PEERS = 3
ROUNDS = 6
PARTS = "tests.peer.learning.user_parts"


def use_parts(dirs: list[Path], task: str, trainer: str, metric: str) -> None:
    for i, directory in enumerate(dirs):
        config = load_config(directory)
        config.model.factory = f"{PARTS}:{task}_model"
        config.model.options = {}
        config.data.loader = f"{PARTS}:{task}_data"
        config.data.options = {"shard": i, "shards": PEERS}
        config.training.trainer = f"{PARTS}:{trainer}"
        config.training.steps_per_round = 30
        config.training.batch_size = 16
        config.training.acceptance_metric = metric
        save_config(directory, config)


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize(
    ("task", "trainer", "metric", "figure", "lower_is_better"),
    [
        ("regression", "RegressionTrainer", "mse", "mse", True),
        ("multilabel", "MultiLabelTrainer", "label_error", "label_accuracy", False),
    ],
)
async def test_a_users_trainer_runs_in_the_daemon(
    tmp_path: Path, task: str, trainer: str, metric: str, figure: str, lower_is_better: bool
) -> None:
    dirs = prepare(tmp_path, PEERS, interval_s=0.3, group_size=PEERS)
    use_parts(dirs, task, trainer, metric)
    async with running(dirs) as peers:
        first = [peer.builtin.learner.trainer.evaluate("test")[figure] for peer in peers]
        with trio.fail_after(120):
            while min(p.rounds.completed for p in peers) < ROUNDS:
                await trio.sleep(0.2)
        async with paused(peers):
            documents = [peer.status_document() for peer in peers]
            last = [peer.builtin.learner.trainer.evaluate("test")[figure] for peer in peers]
    for document in documents:
        history = [e for e in document["rounds"]["history"] if "validation_loss" in e]
        assert history, document["rounds"]
        # Acceptance compared the configured metric: the entries carry its values.
        for entry in history:
            assert entry["accepted"] in (True, False)
            assert entry["validation_loss"]["own"] >= 0
    for before, after in zip(first, last, strict=True):
        assert (after < before) if lower_is_better else (after > before), (first, last)
    # Members that applied a round's average hold the same backbone right after it (one that
    # refused it keeps its own).
    by_group: dict[str, set[str]] = {}
    accepted_by: dict[str, int] = {}
    for document in documents:
        for entry in document["rounds"]["history"]:
            if entry.get("accepted"):
                by_group.setdefault(entry["group"], set()).add(entry["backbone_digest"])
                accepted_by[entry["group"]] = accepted_by.get(entry["group"], 0) + 1
    shared = [g for g, n in accepted_by.items() if n >= 2]
    assert all(len(by_group[g]) == 1 for g in shared), by_group
    applied = sum(d["learning"]["averages_applied"] for d in documents)
    # Every peer starts from the same weights (the model factory under training.seed): the
    # averages fit, and most are taken in (measured: 11-16 of 18 decisions). A seed race
    # between daemons in one process once left half the runs at 0.
    assert applied >= PEERS, [d["rounds"]["history"] for d in documents]
