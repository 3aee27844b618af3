"""Trainer: local training learns, head fine-tuning leaves the backbone alone, seeds replay."""

import copy

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from gossiplearn.peer.learning.architectures import mlp
from gossiplearn.peer.learning.split_model import SplitModel
from gossiplearn.peer.learning.trainer import TrainConfig, Trainer
from gossiplearn.sim.datasets import digits
from tests.peer.learning.test_split_model import seeded


@pytest.fixture(scope="module")
def shard():
    return digits("0/1", seed=0)


def make_trainer(shard, config: TrainConfig, module: nn.Module | None = None) -> Trainer:
    train, validation = shard
    return Trainer(SplitModel(module or seeded(mlp)), train, validation, config)


def test_local_training_learns_digits(shard):
    trainer = make_trainer(shard, TrainConfig(epochs=4))
    assert trainer.num_train_samples == len(shard[0])
    before = trainer.evaluate()
    assert before["samples"] == len(shard[1])
    assert before["accuracy"] < 0.3
    result = trainer.train_local()
    after = trainer.evaluate()
    assert result["loss"] > 0
    assert after["accuracy"] > 0.8
    assert after["loss"] < before["loss"]


def test_finetune_head_changes_only_the_head(shard):
    trainer = make_trainer(shard, TrainConfig(epochs=1, head_epochs=2))
    trainer.train_local()
    model = trainer.model
    backbone_bytes = model.get_backbone().tobytes()
    head_digest = model.head_digest()
    trainer.finetune_head()
    assert model.get_backbone().tobytes() == backbone_bytes
    assert model.head_digest() != head_digest
    assert all(p.requires_grad for p in model.module.parameters())  # flags restored


def test_finetune_head_keeps_backbone_batchnorm_stats(shard):
    module = seeded(
        lambda: nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    )
    model = SplitModel(module, head_prefixes=["3."], share_batchnorm_stats=True)
    train, validation = shard
    trainer = Trainer(model, train, validation, TrainConfig(head_epochs=1))
    shared = model.get_backbone().tobytes()
    whole = model.model_digest()
    trainer.finetune_head()
    assert model.get_backbone().tobytes() == shared
    assert model.model_digest() != whole  # the head did train


def test_same_seed_gives_identical_weights(shard):
    module = seeded(mlp)
    config = TrainConfig(epochs=2, seed=7)
    first = make_trainer(shard, config, copy.deepcopy(module))
    second = make_trainer(shard, config, copy.deepcopy(module))
    other_seed = make_trainer(shard, TrainConfig(epochs=2, seed=8), copy.deepcopy(module))
    for trainer in (first, second, other_seed):
        trainer.train_local()
        trainer.finetune_head()
    assert first.model.model_digest() == second.model.model_digest()
    assert first.model.model_digest() != other_seed.model.model_digest()


def test_training_does_not_touch_the_global_rng(shard):
    trainer = make_trainer(shard, TrainConfig())
    state = torch.get_rng_state()
    trainer.train_local()
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("bad", [{"epochs": -1}, {"batch_size": 0}, {"lr": 0.0}, {"momentum": 1.0}])
def test_config_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_empty_data_is_rejected(shard):
    train, _ = shard
    empty = torch.utils.data.TensorDataset(torch.empty(0, 64), torch.empty(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="non-empty"):
        Trainer(SplitModel(seeded(mlp)), train, empty)


class PlainDataset(torch.utils.data.Dataset):
    """A map-style dataset that is not a TensorDataset: samples come one at a time."""

    def __init__(self, wrapped: torch.utils.data.TensorDataset) -> None:
        self.wrapped = wrapped

    def __len__(self) -> int:
        return len(self.wrapped)

    def __getitem__(self, index: int):
        features, label = self.wrapped[index]
        return features, int(label)


def test_generic_datasets_train_like_tensor_datasets(shard):
    module = seeded(mlp)
    fast = make_trainer(shard, TrainConfig(), copy.deepcopy(module))
    train, validation = shard
    generic = Trainer(
        SplitModel(copy.deepcopy(module)), PlainDataset(train), PlainDataset(validation)
    )
    fast.train_local()
    generic.train_local()
    assert fast.model.model_digest() == generic.model.model_digest()
    assert fast.evaluate() == generic.evaluate()


def test_sgd_is_torchs_bit_for_bit_and_its_steps_are_seen_by_the_global_hooks(shard):
    """The trainer does torch.optim.SGD's arithmetic itself (no optimizer per call): the
    same weights, bit for bit, and torch's global step hooks see every step."""
    config = TrainConfig(epochs=2, head_epochs=1, momentum=0.9)
    ours, theirs = make_trainer(shard, config), make_trainer(shard, config)
    theirs._fit = theirs._fit_with_optimizer  # type: ignore[method-assign]
    seen: list[object] = []
    handle = register_optimizer_step_post_hook(lambda optimizer, *_: seen.append(optimizer))
    try:
        ours.train_local()
        ours.finetune_head()
    finally:
        handle.remove()
    theirs.train_local()
    theirs.finetune_head()
    assert ours.model.model_digest() == theirs.model.model_digest()
    batches = -(-len(shard[0]) // config.batch_size)
    assert len(seen) == (config.epochs + config.head_epochs) * batches
    assert all(group["lr"] == config.lr for step in seen for group in step.param_groups)
