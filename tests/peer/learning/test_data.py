"""Data loader specs: resolving 'module:function' and the loader's contract."""

import pytest
import torch
from torch.utils.data import TensorDataset

from gossiplearn.peer.config import PeerConfig
from gossiplearn.peer.learning.architectures import mlp
from gossiplearn.peer.learning.data import DataLoaderError, load_datasets, resolve
from gossiplearn.sim.datasets import digits

SAMPLES = TensorDataset(torch.zeros(3, 2), torch.zeros(3, dtype=torch.int64))
EMPTY = TensorDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64))


# Loaders for the contract tests, named through this module's own spec.
def good_loader(size: int = 3):
    return SAMPLES, TensorDataset(torch.zeros(size, 2), torch.zeros(size, dtype=torch.int64))


def list_loader():
    return [SAMPLES, SAMPLES]


def triple_loader():
    return SAMPLES, SAMPLES, TensorDataset(torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64))


def quadruple_loader():
    return SAMPLES, SAMPLES, SAMPLES, SAMPLES


def empty_test_loader():
    return SAMPLES, SAMPLES, EMPTY


def iterable_loader():
    return SAMPLES, iter([1, 2])


def empty_loader():
    return EMPTY, SAMPLES


def failing_loader():
    raise RuntimeError("disk on fire")


NOT_CALLABLE = 42


class Namespace:
    @staticmethod
    def loader():
        return SAMPLES, SAMPLES


def spec(name: str) -> str:
    return f"{__name__}:{name}"


def test_resolve_finds_functions_and_dotted_attributes():
    assert resolve("gossiplearn.sim.datasets:digits") is digits
    assert resolve(spec("Namespace.loader")) is Namespace.loader


def test_legacy_module_names_resolve_where_the_modules_live_now():
    # config.toml files written before peer/ was split into rooms name the default model
    # factory "gossiplearn.peer.models:mlp"; errors quote the spec as written.
    assert PeerConfig().model.factory == "gossiplearn.peer.learning.architectures:mlp"
    assert resolve("gossiplearn.peer.models:mlp", "model.factory") is mlp
    with pytest.raises(DataLoaderError, match="'gossiplearn.peer.models:nope': 'nope' not found"):
        resolve("gossiplearn.peer.models:nope", "model.factory")


@pytest.mark.parametrize(
    ("bad_spec", "message"),
    [
        ("gossiplearn.sim.datasets.digits", "not of the form"),
        ("gossiplearn.sim.datasets:", "not of the form"),
        (":digits", "not of the form"),
        ("a:b:c", "not of the form"),
        ("gossip-learn:x", "not of the form"),
        ("no_such_package_xyz.data:load", "module 'no_such_package_xyz.data' not found"),
        ("gossiplearn.no_such_module:load", "not found"),
        ("gossiplearn.sim.datasets:no_such_function", "'no_such_function' not found"),
        (spec("NOT_CALLABLE"), "not callable"),
    ],
)
def test_resolve_errors_are_clear(bad_spec, message):
    with pytest.raises(DataLoaderError, match=message):
        resolve(bad_spec)


def test_load_datasets_passes_options():
    data = load_datasets(spec("good_loader"), {"size": 5})
    assert len(data.train) == 3
    assert len(data.validation) == 5
    assert data.test is data.validation and not data.separate_test  # reported on validation


def test_a_third_set_is_the_test_set():
    data = load_datasets(spec("triple_loader"), {})
    assert len(data.test) == 4 and data.separate_test


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        (
            "list_loader",
            {},
            "must return a \\(train, validation\\) or \\(train, validation, test\\) tuple, got list",
        ),
        ("quadruple_loader", {}, "test\\) tuple, got tuple of 4"),
        ("empty_test_loader", {}, "test set is empty"),
        ("iterable_loader", {}, "validation set .* is not a map-style dataset"),
        ("empty_loader", {}, "training set is empty"),
        ("good_loader", {"size": 0}, "validation set is empty"),
        ("good_loader", {"colour": "red"}, "failed: TypeError"),
        ("failing_loader", {}, "failed: RuntimeError: disk on fire"),
    ],
)
def test_load_datasets_contract_errors(name, options, message):
    with pytest.raises(DataLoaderError, match=message):
        load_datasets(spec(name), options)


def test_builtin_digits_loader_through_a_spec():
    data = load_datasets("gossiplearn.sim.datasets:digits", {"shard": "1/4", "partition": "iid"})
    assert len(data.train) + len(data.validation) in (449, 450)
    split = load_datasets(
        "gossiplearn.sim.datasets:digits",
        {"shard": "1/4", "partition": "iid", "validation": 0.1},
    )
    sizes = [len(split.train), len(split.validation), len(split.test)]
    assert sum(sizes) == len(data.train) + len(data.validation)
    assert sizes[2] == len(data.validation)  # the test set is the same 25% holdout
    assert sizes[1] == round(0.1 * sum(sizes))
