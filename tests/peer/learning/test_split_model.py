"""SplitModel: how the split is named, the shared vector's layout, and digests."""

import numpy as np
import pytest
import torch
from torch import nn

from gossiplearn.peer.learning.architectures import mlp
from gossiplearn.peer.learning.split_model import SplitModel, SplitModelError


def seeded(build, seed: int = 0):
    """Build a module with torch's RNG seeded, without disturbing the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class ConvNet(nn.Module):
    """A flat module (no backbone/head attributes) with BatchNorm, split by prefix."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean(dim=(2, 3)))


def test_attribute_split_names_backbone_and_head():
    model = SplitModel(seeded(mlp))
    assert model.backbone_names == (
        "backbone.0.bias",
        "backbone.0.weight",
        "backbone.2.bias",
        "backbone.2.weight",
    )
    assert model.head_names == ("head.bias", "head.weight")
    assert model.backbone_size == 64 * 64 + 64 + 64 * 64 + 64
    assert model.get_backbone().dtype == np.float32
    assert model.get_backbone().shape == (model.backbone_size,)
    assert len(model.backbone_parameters()) == 4
    assert len(model.head_parameters()) == 2


def test_prefix_split_keeps_batchnorm_stats_local_by_default():
    model = SplitModel(ConvNet(), head_prefixes=["fc."])
    assert model.head_names == ("fc.bias", "fc.weight")
    assert model.backbone_names == ("bn.bias", "bn.weight", "conv.bias", "conv.weight")
    assert not any("running" in name for name in model.backbone_names)


def test_prefix_split_shares_batchnorm_stats_when_asked():
    model = SplitModel(ConvNet(), head_prefixes=["fc."], share_batchnorm_stats=True)
    assert "bn.running_mean" in model.backbone_names
    assert "bn.running_var" in model.backbone_names
    assert "bn.num_batches_tracked" not in model.backbone_names
    local = SplitModel(ConvNet(), head_prefixes=["fc."])
    assert model.backbone_size == local.backbone_size + 2 * 4
    assert model.schema_hash != local.schema_hash
    # Shared statistics are set like any other shared tensor; parameters stay parameters.
    vector = np.arange(model.backbone_size, dtype=np.float32)
    model.set_backbone(vector)
    assert np.array_equal(model.get_backbone(), vector)
    assert len(model.backbone_parameters()) == 4


def test_module_without_backbone_and_head_needs_prefixes():
    with pytest.raises(SplitModelError, match="no `backbone` submodule"):
        SplitModel(ConvNet())


def test_parameter_outside_both_submodules_is_an_error():
    module = seeded(mlp)
    module.scale = nn.Parameter(torch.ones(1))
    with pytest.raises(SplitModelError, match="outside both.*scale"):
        SplitModel(module)


@pytest.mark.parametrize(
    ("prefixes", "message"),
    [
        (["conv.", "bn.", "fc."], "backbone empty"),
        ([""], "backbone empty"),
        ([], "head empty"),
        (["fc2."], "matches no parameter"),
        ("fc.", "not one string"),
    ],
)
def test_bad_prefix_splits_are_errors(prefixes, message):
    with pytest.raises(SplitModelError, match=message):
        SplitModel(ConvNet(), head_prefixes=prefixes)


def test_non_float32_shared_tensor_is_an_error():
    with pytest.raises(SplitModelError, match="float32"):
        SplitModel(seeded(mlp).double())


def test_get_set_round_trip_is_bit_exact():
    source, target = SplitModel(seeded(mlp, 1)), SplitModel(seeded(mlp, 2))
    vector = source.get_backbone()
    assert not np.array_equal(vector, target.get_backbone())
    head_before = target.head_digest()
    target.set_backbone(vector)
    assert target.get_backbone().tobytes() == vector.tobytes()
    assert target.backbone_digest() == source.backbone_digest()
    assert target.head_digest() == head_before  # the head is never touched


def test_get_backbone_returns_a_copy():
    model = SplitModel(seeded(mlp))
    vector = model.get_backbone()
    vector[:] = 0
    assert model.get_backbone().any()


def test_mix_moves_part_of_the_way():
    model = SplitModel(seeded(mlp))
    start = model.get_backbone()
    target = start + 1.0
    model.set_backbone(target, mix=0.25)
    np.testing.assert_allclose(model.get_backbone(), start + 0.25, atol=1e-6)


@pytest.mark.parametrize("mix", [0.0, -0.5, 1.5, float("nan")])
def test_mix_out_of_range_is_an_error(mix):
    model = SplitModel(seeded(mlp))
    with pytest.raises(SplitModelError, match="mix"):
        model.set_backbone(model.get_backbone(), mix=mix)


def test_bad_vectors_are_rejected_without_changing_the_model():
    model = SplitModel(seeded(mlp))
    digest = model.model_digest()
    vector = model.get_backbone()
    with pytest.raises(SplitModelError, match="shape"):
        model.set_backbone(vector[:-1])
    poisoned = vector.copy()
    poisoned[-1] = np.nan
    with pytest.raises(SplitModelError, match="NaN"):
        model.set_backbone(poisoned)
    assert model.model_digest() == digest


def test_schema_hash_depends_on_architecture_not_weights():
    first, second = SplitModel(seeded(mlp, 1)), SplitModel(seeded(mlp, 2))
    assert len(first.schema_hash) == 32
    assert first.schema_hash == second.schema_hash
    assert first.schema_hash != SplitModel(mlp(hidden=(64, 32))).schema_hash


def test_digests_follow_the_weights():
    model = SplitModel(seeded(mlp))
    backbone, head, whole = model.backbone_digest(), model.head_digest(), model.model_digest()
    assert len({backbone, head, whole}) == 3
    assert all(len(digest) == 64 for digest in (backbone, head, whole))
    with torch.no_grad():
        model.head_parameters()[0].add_(1.0)
    assert model.backbone_digest() == backbone
    assert model.head_digest() != head
    assert model.model_digest() != whole
    model.set_backbone(model.get_backbone() + 1.0)
    assert model.backbone_digest() != backbone


def test_model_digest_covers_local_batchnorm_stats():
    model = SplitModel(ConvNet(), head_prefixes=["fc."])
    before = (model.backbone_digest(), model.model_digest())
    model.module.train()
    model.module(torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(0)))
    assert model.backbone_digest() == before[0]  # running stats are not shared
    assert model.model_digest() != before[1]


def test_attribute_split_shares_only_backbone_batchnorm_stats():
    module = seeded(mlp)
    module.backbone.append(nn.BatchNorm1d(64))
    module.head = nn.Sequential(nn.BatchNorm1d(64), nn.Linear(64, 10))
    model = SplitModel(module, share_batchnorm_stats=True)
    assert "backbone.4.running_mean" in model.backbone_names
    assert not any(name.startswith("head.") for name in model.backbone_names)
