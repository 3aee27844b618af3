"""The learning schedule around rounds: a fixed local budget per round, averages applied
without losing the steps taken since the contribution, and personal acceptance.

The Learner is what the daemon and every simulation mode run (peer/learning/learner.py); the last two
tests check the daemon itself, live: one budget per round, and refusals counted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trio

from gossiplearn.peer.daemon import Daemon
from gossiplearn.peer.learning.architectures import mlp
from gossiplearn.peer.learning.data import peer_data
from gossiplearn.peer.learning.learner import AcceptanceConfig, Learner
from gossiplearn.peer.learning.split_model import SplitModel
from gossiplearn.peer.learning.trainer import TrainConfig, Trainer
from gossiplearn.sim.datasets import digits
from gossiplearn.testing.cluster import prepare, running
from gossiplearn.testing.insider import Insider


def learner(
    acceptance: AcceptanceConfig | None = None,
    steps: int = 5,
    shard: str = "0/4",
    seed: int = 0,
) -> Learner:
    torch.manual_seed(seed)
    model = SplitModel(mlp(64, (32,), 10))
    data = peer_data(digits(shard, "iid", seed=0, validation=0.1))
    config = TrainConfig(steps_per_round=steps, batch_size=16)
    trainer = Trainer(model, data.train, data.validation, config, data.test)
    return Learner(model, trainer, acceptance or AcceptanceConfig())


def counting_steps(peer: Learner) -> list[int]:
    """Counts optimizer steps (training forward passes) of ``peer``'s model."""
    counted = [0]
    module = peer.model.module

    def hook(*_: object) -> None:
        if module.training:
            counted[0] += 1

    module.register_forward_hook(hook)
    return counted


def test_a_round_trains_exactly_its_budget_of_steps() -> None:
    peer = learner(steps=7)
    steps = counting_steps(peer)
    peer.train_round()
    assert steps[0] == 7
    peer.train_round()
    assert steps[0] == 14  # batches run on through the epoch, the budget stays 7


def test_steps_taken_since_the_contribution_are_kept_when_the_average_is_applied() -> None:
    # Contribute, train on (the daemon's training.overlap, or any trainer that kept going),
    # then the round's average arrives. Version 1 set the backbone to the average, throwing
    # the later steps away; now the round's change is applied on top of them.
    peer = learner(AcceptanceConfig(enabled=False))
    contribution = peer.train_round()
    peer.trainer.train_local()  # local progress after the contribution was taken
    progressed = peer.model.get_backbone()
    assert not np.array_equal(progressed, contribution)
    average = contribution + np.random.default_rng(0).normal(0, 0.01, contribution.size).astype(
        np.float32
    )
    applied = peer.apply(average, contribution)
    assert applied.accepted
    kept = peer.model.get_backbone()
    np.testing.assert_allclose(kept, progressed + (average - contribution), rtol=0, atol=1e-6)
    # The local steps' effect is in there: not just the average.
    assert np.abs(kept - average).max() > 1e-3


def test_without_later_steps_the_average_lands_exactly() -> None:
    peer = learner(AcceptanceConfig(enabled=False))
    contribution = peer.train_round()
    average = (contribution * 0.5).astype(np.float32)
    peer.apply(average, contribution)
    np.testing.assert_array_equal(peer.model.get_backbone(), average)


def test_an_average_that_hurts_is_refused_counted_and_leaves_the_model_as_it_was() -> None:
    peer = learner(steps=60)
    for _ in range(3):
        contribution = peer.train_round()
    before = peer.model.model_digest()
    accuracy = peer.evaluate()["accuracy"]
    applied = peer.apply(np.zeros_like(contribution), contribution)  # a poisoned "average"
    assert not applied.accepted and applied.new_loss > applied.own_loss
    assert (peer.accepted, peer.refused) == (0, 1)
    assert peer.model.model_digest() == before  # head and backbone restored
    assert applied.metrics["accuracy"] == accuracy
    # An average that does not hurt is applied and counted.
    applied = peer.apply(contribution.copy(), contribution)
    assert applied.accepted and (peer.accepted, peer.refused) == (1, 1)


class FarBackbone:
    """A trainer on 16 validation samples: the 0-1 loss is ``errors`` while the backbone is
    near zero and ``far_errors`` once it is far from zero; the per-sample loss grows with the
    backbone's distance from zero."""

    def __init__(self, model: SplitModel, errors: int, far_errors: int) -> None:
        self.model = model
        self.errors = errors
        self.far_errors = far_errors

    def _size(self) -> float:
        return float(np.abs(self.model.get_backbone()).mean())

    def finetune_head(self) -> dict[str, float]:
        return {}

    def evaluate(self, split: str = "test") -> dict[str, float]:
        return {"accuracy": 0.5}

    def losses(self, split: str, metric: str) -> np.ndarray:
        if metric == "error":
            wrong = self.far_errors if self._size() > 1 else self.errors
            return np.array([1.0] * wrong + [0.0] * (16 - wrong))
        return np.linspace(1.0, 1.1, 16) + self._size()


@pytest.mark.parametrize("guard", [True, False])
@pytest.mark.parametrize(
    ("far", "errors", "far_errors", "refusal"),
    [
        # Early in training both backbones get the same samples wrong: an average pulled to
        # a near-constant backbone (a poisoner's doing) ties on the error, loses on the loss.
        (2.0, 8, 8, "loss_worse"),
        # A near-random peer: the error even improves, but the loss blows up (training from
        # such a backbone killed every ReLU in the live test).
        (8.0, 12, 11, "loss_blowup"),
    ],
)
def test_what_the_error_misses_the_loss_catches(
    guard: bool,
    far: float,
    errors: int,
    far_errors: int,
    refusal: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not guard:  # the guard switched off: the acceptance metric alone decides
        monkeypatch.setattr("gossiplearn.peer.learning.learner.TIE_BREAK_METRIC", "error")
    model = SplitModel(mlp(64, (32,), 10))
    peer = Learner(model, FarBackbone(model, errors, far_errors))  # type: ignore[arg-type]
    contribution = model.get_backbone()
    applied = peer.apply(np.full_like(contribution, far), contribution)
    assert (applied.own_loss, applied.new_loss) == (errors / 16, far_errors / 16)
    assert applied.accepted is not guard
    assert applied.refusal == (refusal if guard else None)
    assert (peer.refused, peer.accepted) == ((1, 0) if guard else (0, 1))


def test_an_average_near_ones_own_is_not_refused_on_the_loss() -> None:
    model = SplitModel(mlp(64, (32,), 10))
    peer = Learner(model, FarBackbone(model, 8, 8))  # type: ignore[arg-type]
    contribution = model.get_backbone()
    applied = peer.apply(contribution + np.float32(0.001), contribution)
    assert applied.accepted and applied.refusal is None


def test_a_local_reference_takes_over_when_it_does_better() -> None:
    # With a local-only reference, an average applied that makes the peer worse than the
    # reference on validation is undone: the peer falls back to what it would have alone.
    peer = learner(AcceptanceConfig(enabled=False), steps=60)
    alone = SplitModel(mlp(64, (32,), 10))
    alone.module.load_state_dict(peer.model.module.state_dict())
    trainer = peer.trainer
    peer.reference = (alone, Trainer(alone, trainer.train_data, trainer.val_data, trainer.config))
    for _ in range(3):
        contribution = peer.train_round()
    peer.apply(np.zeros_like(contribution), contribution)
    assert peer.fell_back == 1
    assert peer.model.model_digest() == alone.model_digest()
    # An average that helps no less than the reference is kept.
    contribution = peer.train_round()
    peer.apply(contribution.copy(), contribution)
    assert peer.fell_back == 1


def test_an_acceptance_metric_the_trainer_lacks_is_named_in_the_error() -> None:
    peer = learner(AcceptanceConfig(metric="f1"))
    contribution = peer.train_round()
    with pytest.raises(KeyError, match="training.acceptance_metric = 'f1'.*'accuracy'"):
        peer.apply(contribution.copy(), contribution)


def test_without_acceptance_a_harmful_average_is_applied() -> None:
    peer = learner(AcceptanceConfig(enabled=False), steps=60)
    for _ in range(3):
        contribution = peer.train_round()
    applied = peer.apply(np.zeros_like(contribution), contribution)
    assert applied.accepted
    np.testing.assert_array_equal(peer.model.get_backbone(), np.zeros_like(contribution))


@pytest.mark.parametrize(("metric", "tolerance"), [("loss", -0.1), ("", 0.0), ("f1 score", 0.0)])
def test_acceptance_settings_are_checked(metric: str, tolerance: float) -> None:
    with pytest.raises(ValueError, match="acceptance"):
        AcceptanceConfig(metric=metric, tolerance=tolerance)


# ---- the daemon, live -------------------------------------------------------------------------


class CountingInsider(Insider):
    """An honest machine; as an Insider it records every contribution it is given."""


class Shifting(Insider):
    """Brings a backbone of all 8.0 (plausible: the average stays within max_abs_average) to
    every round: any group average it is in is far from what fits the honest peers."""

    def set_contribution(self, vector: np.ndarray, weight: int, schema_hash: bytes) -> None:
        shifted = np.full_like(vector, 8.0)
        shifted[-1] += np.float32(1e-3 * len(self.contributions))  # a new vector each time
        super().set_contribution(shifted, weight, schema_hash)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_daemons_train_one_budget_per_round_and_count_refused_averages(
    tmp_path: Path,
) -> None:
    # Four daemons inviting every ~0.5 s; peer 3 poisons every average it is in. Every round
    # an honest peer takes part in follows exactly one training budget (version 1 trained on
    # a timer, so local work per round varied), and the poisoned averages are refused there,
    # counted in the status and in /metrics.
    dirs = prepare(tmp_path, 4, interval_s=0.5, group_size=4)
    factories = {0: CountingInsider, 1: CountingInsider, 2: CountingInsider, 3: Shifting}
    async with running(dirs, node_factories=factories) as peers:
        honest, poisoner = peers[:3], peers[3]
        poisoner_id = poisoner.peer_id
        with trio.move_on_after(150):
            while min(p.rounds.completed for p in honest) < 4:
                await trio.sleep(0.2)
        assert min(p.rounds.completed for p in honest) >= 4, [
            (p.rounds.completed, dict(p.rounds.abort_reasons), p.rounds.cancelled) for p in peers
        ]
        for peer in honest:
            async with peer.builtin.paused():  # no average half taken in while we read
                check_counts(peer, poisoner_id)


def check_counts(peer: Daemon, poisoner_id: str) -> None:
    node = peer.node
    assert isinstance(node, Insider)
    ended = peer.rounds.completed + peer.rounds.aborted
    # One contribution per budget: each round spent one, the current one waits.
    assert ended <= len(node.contributions) <= ended + 1
    document = peer.status_document()
    learning = document["learning"]
    # Rounds finished whose average waits for the model (held still here) count as pending.
    assert (
        learning["averages_applied"] + learning["averages_refused"] + (peer.averages_pending)
        == peer.rounds.completed
    )
    history = document["rounds"]["history"]
    poisoned = [e for e in history if poisoner_id in e["members"]]
    assert poisoned and not any(e["accepted"] for e in poisoned)
    assert all(
        e["validation_loss"]["average"] > e["validation_loss"]["own"]
        if e["refusal"] == "worse"
        else e["refusal"] in ("loss_worse", "loss_blowup")
        for e in poisoned
    ), poisoned
    assert learning["averages_refused"] >= len(poisoned)
    metrics = peer._render_metrics().decode()
    refused = learning["averages_refused"]
    assert f'gossiplearn_averages_total{{decision="refused"}} {refused}.0' in metrics
