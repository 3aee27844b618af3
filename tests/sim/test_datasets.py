"""Partitions and the digits dataset: seeded, disjoint, covering, non-empty, skewed on demand."""

import numpy as np
import pytest

from gossiplearn.sim.datasets import digits, dirichlet_partition, iid_partition, parse_shard

DIGITS_SIZE = 1797


@pytest.fixture(scope="module")
def labels():
    # A label vector shaped like the digits dataset (10 classes), without loading it.
    return np.random.default_rng(123).integers(0, 10, size=DIGITS_SIZE)


def mean_majority_fraction(labels, parts) -> float:
    """Average over shards of the share of the shard's most common class."""
    return float(np.mean([np.bincount(labels[part]).max() / len(part) for part in parts]))


def assert_partition(parts, n: int, shards: int) -> None:
    assert len(parts) == shards
    assert all(len(part) > 0 for part in parts)
    assert all(np.array_equal(part, np.sort(part)) for part in parts)
    joined = np.concatenate(parts)
    assert len(joined) == n  # disjoint ...
    assert np.array_equal(np.sort(joined), np.arange(n))  # ... and covering


@pytest.mark.parametrize("text", ["0/1", "3/4", " 2/3 "])
def test_parse_shard_accepts(text):
    index, count = parse_shard(text)
    assert 0 <= index < count


@pytest.mark.parametrize("text", ["4/4", "-1/4", "1", "a/b", "1/0", "1/2/3", ""])
def test_parse_shard_rejects(text):
    with pytest.raises(ValueError, match="shard"):
        parse_shard(text)


@pytest.mark.parametrize("shards", [3, 10, 50])
@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_dirichlet_partition_is_a_seeded_partition(labels, shards, alpha):
    parts = dirichlet_partition(labels, shards, alpha, seed=5)
    assert_partition(parts, len(labels), shards)
    assert min(len(part) for part in parts) >= 10  # topped up to the minimum size
    again = dirichlet_partition(labels, shards, alpha, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = dirichlet_partition(labels, shards, alpha, seed=6)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


@pytest.mark.parametrize("shards", [3, 10, 50])
def test_iid_partition_is_a_seeded_partition(shards):
    parts = iid_partition(DIGITS_SIZE, shards, seed=5)
    assert_partition(parts, DIGITS_SIZE, shards)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    again = iid_partition(DIGITS_SIZE, shards, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_dirichlet_is_label_skewed_and_iid_is_not(labels):
    skewed = dirichlet_partition(labels, 10, 0.1, seed=0)
    uniform = iid_partition(len(labels), 10, seed=0)
    assert mean_majority_fraction(labels, skewed) > 0.5
    assert mean_majority_fraction(labels, uniform) < 0.3


def test_partitions_reject_impossible_requests(labels):
    with pytest.raises(ValueError, match="cannot give"):
        dirichlet_partition(labels[:20], 3, 0.5, seed=0)
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_partition(labels, 3, 0.0, seed=0)
    with pytest.raises(ValueError, match="cannot give"):
        iid_partition(2, 3, seed=0)


@pytest.mark.parametrize("partition", ["dirichlet:0.3", "iid"])
def test_digits_shards_are_disjoint_across_peers(partition):
    peers = 4
    seen = []
    for index in range(peers):
        train, validation = digits(f"{index}/{peers}", partition=partition, seed=3)
        assert len(train) > 0 and len(validation) > 0
        # Rows identify samples: the 1797 digits images are all distinct.
        seen += [row.tobytes() for row in train.tensors[0].numpy()]
        seen += [row.tobytes() for row in validation.tensors[0].numpy()]
    assert len(seen) == len(set(seen)) == DIGITS_SIZE
    all_train, all_validation = digits("0/1", partition=partition, seed=3)
    everything = {row.tobytes() for row in all_train.tensors[0].numpy()}
    everything |= {row.tobytes() for row in all_validation.tensors[0].numpy()}
    assert set(seen) == everything


def test_digits_features_labels_and_holdout():
    train, validation = digits("0/1", seed=0, holdout=0.25)
    features, labels = train.tensors
    assert features.dtype.is_floating_point and str(features.dtype) == "torch.float32"
    assert str(labels.dtype) == "torch.int64"
    assert features.shape[1] == 64
    assert float(features.min()) >= 0.0 and float(features.max()) <= 1.0
    assert abs(len(validation) - 0.25 * DIGITS_SIZE) <= 1
    assert len(train) + len(validation) == DIGITS_SIZE


def test_digits_is_deterministic_in_its_seed():
    first, second = digits("1/3", seed=9), digits("1/3", seed=9)
    for a, b in zip(first, second, strict=True):
        assert all(
            np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a.tensors, b.tensors, strict=True)
        )
    other = digits("1/3", seed=10)
    assert len(other[0]) != len(first[0]) or not np.array_equal(
        other[0].tensors[1].numpy(), first[0].tensors[1].numpy()
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"partition": "dirichlet:0"}, "partition"),
        ({"partition": "dirichlet:abc"}, "partition"),
        ({"partition": "shuffle"}, "partition"),
        ({"holdout": 1.0}, "holdout"),
        ({"shard": "5/5"}, "shard"),
        ({"shard": "0/1000", "partition": "iid"}, "cannot give"),
    ],
)
def test_digits_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        digits(**options)
