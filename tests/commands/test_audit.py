"""``gossiplearn audit DIR`` on a real peer directory: the table, --json, the plot, and the
one-line errors (no checkpoint yet, not a peer directory)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gossiplearn.peer.config import CHECKPOINT_DIR, load_config
from gossiplearn.peer.learning.builtin import load_learning
from gossiplearn.peer.learning.checkpoint import CheckpointMeta, save_checkpoint
from tests.commands.test_mistakes import cli, edit, new_peer, one_line

pytestmark = pytest.mark.timeout(60)


def _peer_with_checkpoint(tmp_path: Path, rounds: int = 3) -> Path:
    """A digits peer (shard 0/3, as `gossiplearn init --shard 0/3`) trained for ``rounds``
    rounds and checkpointed, as the daemon does."""
    directory = tmp_path / "org"
    assert cli("init", directory, "--dataset", "digits", "--shard", "0/3").returncode == 0
    model, _, trainer, _ = load_learning(load_config(directory))
    for _ in range(rounds):
        trainer.train_round()
    save_checkpoint(directory / CHECKPOINT_DIR, model, CheckpointMeta(rounds_completed=rounds))
    return directory


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _peer_with_checkpoint(tmp_path_factory.mktemp("audit"))


def _between(values: list[float], low: float = 0.0, high: float = 1.0) -> bool:
    return all(low <= value <= high for value in values)


def test_json_document(peer: Path, tmp_path: Path) -> None:
    plot = tmp_path / "roc.png"
    result = cli("audit", peer, "--json", "--references", "2", "--seed", "1", "--plot", plot)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert {
        "directory",
        "checkpoint",
        "members",
        "non_members",
        "reference_models",
        "reference_samples",
        "reference_steps",
        "lira_statistic",
        "seed",
        "bootstrap",
        "attacks",
        "verdict",
        "lower_bound",
        "plot",
    } <= document.keys()
    assert document["checkpoint"]["rounds_completed"] == 3
    assert document["members"] == document["non_members"] > 10
    assert document["reference_models"] == 2 and document["seed"] == 1
    assert document["lira_statistic"] == "logit_confidence"
    assert set(document["attacks"]) == {"loss", "lira"}
    for attack in document["attacks"].values():
        for key in ("auc", "tpr_at_fpr_0.001", "tpr_at_fpr_0.01"):
            low, high = attack[f"{key}_ci"]
            assert _between([attack[key], low, high])
            assert low <= high
    assert document["verdict"]["level"] in ("low", "moderate", "high")
    assert document["verdict"]["text"].startswith(document["verdict"]["level"] + " exposure")
    assert document["plot"] == str(plot)
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "training reference model 2/2" in result.stderr  # progress, on stderr only

    again = cli("audit", peer, "--json", "--references", "2", "--seed", "1", "--plot", plot)
    assert json.loads(again.stdout)["attacks"] == document["attacks"]  # deterministic


def test_table_and_default_plot(peer: Path) -> None:
    result = cli("audit", peer, "--references", "0", "--samples", "50")
    assert result.returncode == 0, result.stderr
    assert "loss threshold" in result.stdout and "AUC" in result.stdout
    assert "exposure: an attacker" in result.stdout
    assert "lower bound" in result.stdout
    plot = peer / "audit" / "roc.png"
    assert f"ROC plot written to {plot}" in result.stdout
    assert plot.stat().st_size > 1000


def test_no_checkpoint_yet(tmp_path: Path) -> None:
    directory = new_peer(tmp_path)
    one_line(cli("audit", directory), 1, "no checkpoint yet", f"gossiplearn run {directory}")


def test_not_a_peer_directory(tmp_path: Path) -> None:
    one_line(cli("audit", tmp_path), 2, "no config.toml", "gossiplearn init")


def test_bad_arguments(peer: Path) -> None:
    one_line(cli("audit", peer, "--references", "1"), 2, "references", "--references")


def test_data_loader_failing(tmp_path: Path) -> None:
    directory = _peer_with_checkpoint(tmp_path, rounds=1)
    edit(directory, "data", "loader", '"gossiplearn.sim.datasets:no_such_loader"')
    one_line(cli("audit", directory), 1, "data.loader", "no_such_loader")
