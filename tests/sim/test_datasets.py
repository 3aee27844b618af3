"""Partitions and datasets: seeded, disjoint, covering, non-empty, skewed on demand.

The Fashion-MNIST tests that read the real files need the Debian package
dataset-fashion-mnist, which CI installs through the Makefile; they are skipped (with that
reason) only where it is missing. The IDX reader and the loader's error paths are tested on
small files written here, so they run everywhere.
"""

import gzip
import hashlib
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from gossiplearn.peer.learning.data import PeerData
from gossiplearn.sim.datasets import (
    DATASETS,
    FASHION_MNIST_ROOT,
    DatasetUnavailable,
    IdxFormatError,
    digits,
    dirichlet_partition,
    fashion_mnist,
    iid_partition,
    load_all_shards,
    load_shard,
    parse_shard,
    read_idx,
    shards_partition,
    synthetic,
)

DIGITS_SIZE = 1797
FASHION_SIZE = 70_000
FASHION_FILES = {
    "train-images-idx3-ubyte.gz": 3,
    "train-labels-idx1-ubyte.gz": 1,
    "t10k-images-idx3-ubyte.gz": 3,
    "t10k-labels-idx1-ubyte.gz": 1,
}
FASHION_INSTALLED = all((Path(FASHION_MNIST_ROOT) / name).is_file() for name in FASHION_FILES)
needs_fashion = pytest.mark.skipif(
    not FASHION_INSTALLED,
    reason=f"Debian package dataset-fashion-mnist not installed ({FASHION_MNIST_ROOT} "
    "missing); CI installs it via the Makefile",
)


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


@pytest.mark.parametrize("partition", ["dirichlet:0.3", "iid", "shards:2"])
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
        ({"partition": "shards:0"}, "'shards:C' with C >= 1"),
        ({"partition": "shards:two"}, "shards:C"),
        ({"partition": "shards:-1"}, "partition"),
        ({"shard": "0/1000", "partition": "shards:2"}, "cannot give"),
    ],
)
def test_digits_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        digits(**options)


def distinct_labels(labels, parts) -> float:
    return float(np.mean([len(np.unique(labels[part])) for part in parts]))


def assert_labels_below(labels, classes: int) -> None:
    assert set(np.unique(labels.numpy()).tolist()) <= set(range(classes))


def assert_same_datasets(first, second) -> None:
    """Two (train, validation[, test]) tuples (or PeerData) hold identical tensors."""
    first, second = (x.as_tuple() if isinstance(x, PeerData) else x for x in (first, second))
    for a, b in zip(first, second, strict=True):
        for x, y in zip(a.tensors, b.tensors, strict=True):
            assert x.dtype == y.dtype and np.array_equal(x.numpy(), y.numpy())


# ---- shards:C ------------------------------------------------------------------------------


@pytest.mark.parametrize(("shards", "per_shard"), [(50, 2), (100, 1), (20, 3)])
def test_shards_partition_is_a_seeded_class_skewed_partition(labels, shards, per_shard):
    parts = shards_partition(labels, shards, per_shard, seed=5)
    assert_partition(parts, len(labels), shards)
    assert distinct_labels(labels, parts) <= per_shard + 0.5
    again = shards_partition(labels, shards, per_shard, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = shards_partition(labels, shards, per_shard, seed=6)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_shards_partition_of_balanced_classes_never_exceeds_c():
    # 100 samples per class and 50 per piece: pieces never straddle two classes.
    balanced = np.repeat(np.arange(10), 100)
    parts = shards_partition(balanced, 10, 2, seed=0)
    assert_partition(parts, len(balanced), 10)
    assert all(len(np.unique(balanced[part])) <= 2 for part in parts)
    assert mean_majority_fraction(balanced, parts) >= 0.5


def test_shards_partition_rejects_impossible_requests(labels):
    with pytest.raises(ValueError, match="classes per shard"):
        shards_partition(labels, 3, 0, seed=0)
    with pytest.raises(ValueError, match="cannot give"):
        shards_partition(labels[:10], 4, 3, seed=0)
    assert len(shards_partition(labels[:12], 4, 3, seed=0)) == 4  # N * C == n is fine


def test_partition_error_lists_every_form():
    with pytest.raises(ValueError, match="'iid', 'dirichlet:ALPHA'.*'shards:C'"):
        digits(partition="shuffle")


# ---- IDX reader ----------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An unsigned-byte IDX encoding of ``array``, written independently of read_idx."""
    magic = 0x0800 | array.ndim if magic is None else magic
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (0, 2)])
def test_read_idx_round_trip(tmp_path, compress, shape):
    array = np.random.default_rng(0).integers(0, 256, size=shape).astype(np.uint8)
    data = idx_bytes(array)
    path = tmp_path / "tiny.idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    decoded = read_idx(path, len(shape))
    assert decoded.dtype == np.uint8 and decoded.shape == shape
    assert np.array_equal(decoded, array)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda data: data[:3], "too short"),
        (lambda data: b"\x00\x00\x08\x01" + data[4:], "magic 0x00000801, expected 0x00000803"),
        (lambda data: b"\x00\x00\x0d\x03" + data[4:], "magic"),  # floats, not unsigned bytes
        (lambda data: data[:-1], "truncated"),
        (lambda data: data + b"\x00", "found 25"),
        (lambda data: gzip.compress(data)[:-12], "corrupt gzip"),
        (lambda data: gzip.compress(data)[:12] + b"\xff" * 20, "corrupt gzip"),
    ],
)
def test_read_idx_rejects_corrupt_files(tmp_path, corrupt, message):
    path = tmp_path / "bad.gz"
    path.write_bytes(corrupt(idx_bytes(np.zeros((2, 3, 4), dtype=np.uint8))))
    with pytest.raises(IdxFormatError, match=message) as info:
        read_idx(path, 3)
    assert str(path) in str(info.value)


# ---- Fashion-MNIST -------------------------------------------------------------------------


def write_fake_fashion(root: Path, train: int = 30, test: int = 10, side: int = 28) -> None:
    """A tiny Fashion-MNIST-shaped set, every image distinct (its first pixels count up)."""
    rng = np.random.default_rng(1)
    for split, count in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, size=(count, side, side)).astype(np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        (root / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (root / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(DatasetUnavailable) as info:
        fashion_mnist(root=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path) in message
    # One file missing is as unavailable as all of them.
    write_fake_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetUnavailable, match="apt-get install"):
        fashion_mnist(root=tmp_path)


def test_fashion_mnist_pools_and_splits_the_idx_files(tmp_path):
    write_fake_fashion(tmp_path)
    shards = [fashion_mnist(f"{i}/4", partition="iid", seed=2, root=tmp_path) for i in range(4)]
    rows = []
    for data in shards:
        for part in data:
            features, labels = part.tensors
            assert features.shape[1] == 784 and str(features.dtype) == "torch.float32"
            assert float(features.min()) >= 0.0 and float(features.max()) <= 1.0
            rows += [row.tobytes() for row in features.numpy()]
    assert len(rows) == len(set(rows)) == 40  # train and test pooled, shards disjoint
    assert_same_datasets(shards[1], fashion_mnist("1/4", partition="iid", seed=2, root=tmp_path))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("bad-magic", "magic"),
        ("truncated", "truncated"),
        ("label-count", "labels for"),
        ("image-size", "expected 28x28"),
    ],
)
def test_fashion_mnist_rejects_corrupt_files(tmp_path, damage, message):
    write_fake_fashion(tmp_path, side=27 if damage == "image-size" else 28)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(images.read_bytes())
    if damage == "bad-magic":
        images.write_bytes(gzip.compress(b"\x00\x00\x08\x02" + data[4:]))
    elif damage == "truncated":
        images.write_bytes(gzip.compress(data[:-100]))
    elif damage == "label-count":
        labels = np.zeros(29, dtype=np.uint8)
        (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(IdxFormatError, match=message):
        fashion_mnist(root=tmp_path)


def row_digests(features: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in features]


@needs_fashion
def test_fashion_mnist_iid_shards_cover_all_70000_samples_once():
    peers = 7
    shards = load_all_shards("fashion-mnist", peers, "iid", seed=0)
    digests, counts = [], np.zeros(10, dtype=np.int64)
    for data in shards:
        for part in data.as_tuple():
            features, labels = part.tensors
            assert features.shape[1] == 784 and str(labels.dtype) == "torch.int64"
            assert float(features.min()) >= 0.0 and float(features.max()) <= 1.0
            assert_labels_below(labels, 10)
            counts += np.bincount(labels.numpy(), minlength=10)
            digests += row_digests(np.rint(features.numpy() * 255).astype(np.uint8))
    assert len(digests) == FASHION_SIZE
    assert counts.tolist() == [FASHION_SIZE // 10] * 10
    # Compared with the files read directly: the shards are exactly the pooled images (as a
    # multiset; Fashion-MNIST may hold duplicate images, so a set would not do).
    root = Path(FASHION_MNIST_ROOT)
    pooled = np.concatenate(
        [
            read_idx(root / name, 3).reshape(-1, 784)
            for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")
        ]
    )
    assert sorted(digests) == sorted(row_digests(pooled))


@needs_fashion
def test_fashion_mnist_shards_are_label_skewed():
    shards = load_all_shards("fashion-mnist", 20, "shards:2", seed=1)
    per_peer = [len(np.unique(data.train.tensors[1].numpy())) for data in shards]
    assert np.mean(per_peer) <= 2.5


# ---- synthetic -----------------------------------------------------------------------------


def test_synthetic_device_depends_only_on_seed_and_index():
    alone = synthetic("3/10", seed=4)
    assert_same_datasets(alone, synthetic("3/10", seed=4))
    assert_same_datasets(alone, synthetic("3/1000", seed=4))  # N does not matter
    other_seed = synthetic("3/10", seed=5)
    assert not np.array_equal(alone[0].tensors[0].numpy()[:1], other_seed[0].tensors[0].numpy()[:1])


def test_synthetic_shapes_and_holdout():
    for index in range(20):
        train, validation = synthetic(f"{index}/20")
        for part in (train, validation):
            features, labels = part.tensors
            assert features.shape[1] == 60 and str(features.dtype) == "torch.float32"
            assert str(labels.dtype) == "torch.int64"
            assert_labels_below(labels, 10)
        total = len(train) + len(validation)
        assert 50 <= total <= 1000
        assert abs(len(validation) - 0.25 * total) <= 1


def test_synthetic_devices_differ_in_label_distribution():
    histograms = []
    for index in range(10):
        train, _ = synthetic(f"{index}/10", seed=0)
        counts = np.bincount(train.tensors[1].numpy(), minlength=10)
        histograms.append(counts / counts.sum())
    # Total variation distance between device pairs: label skew, not one shared distribution.
    distances = [
        0.5 * np.abs(histograms[i] - histograms[j]).sum()
        for i in range(10)
        for j in range(i + 1, 10)
    ]
    assert np.median(distances) > 0.5


def test_synthetic_partition_spec_sets_alpha_and_beta():
    assert_same_datasets(
        load_shard("synthetic", "2/5", "synthetic:0.5,0.25", seed=1),
        synthetic("2/5", alpha=0.5, beta=0.25, seed=1),
    )
    defaults = synthetic("2/5", seed=1)
    for ignored in ("iid", "dirichlet:0.3", "synthetic:1,1"):
        assert_same_datasets(load_shard("synthetic", "2/5", ignored, seed=1), defaults)
    for bad in ("synthetic:1", "synthetic:a,b", "synthetic:-1,0", "synthetic:1,2,3"):
        with pytest.raises(ValueError, match="synthetic:ALPHA,BETA"):
            load_shard("synthetic", "0/5", bad)


def test_synthetic_1000_devices_are_fast_and_match_single_loads():
    start = time.perf_counter()
    shards = load_all_shards("synthetic", 1000, "synthetic:1,1", seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 20, f"1000 synthetic devices took {elapsed:.1f} s"
    assert len(shards) == 1000
    for index in (0, 499, 999):
        assert_same_datasets(shards[index], synthetic(f"{index}/5000", seed=0))


# ---- the validation split --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_a_validation_set_is_held_out_of_training_only(name):
    # The test set stays the same 25%: every method is measured on the same samples, and
    # gossiplearn's validation set (for personal acceptance) comes out of the training part.
    plain = load_shard(name, "2/5", "iid", seed=3)
    split = load_shard(name, "2/5", "iid", seed=3, validation=0.1)
    assert split.separate_test and not plain.separate_test
    assert_same_datasets((split.test,), (plain.test,))
    train_rows = {r.tobytes() for r in plain.train.tensors[0].numpy()}
    held = [split.train, split.validation]
    assert sum(len(part) for part in held) == len(plain.train)
    assert {r.tobytes() for part in held for r in part.tensors[0].numpy()} == train_rows
    total = len(plain.train) + len(plain.test)
    assert len(split.validation) == max(1, round(0.1 * total))


def test_a_validation_fraction_beyond_the_training_part_is_refused():
    with pytest.raises(ValueError, match="validation must be in"):
        digits("0/4", validation=0.75)


# ---- registry ------------------------------------------------------------------------------


@pytest.mark.parametrize("partition", ["dirichlet:0.3", "iid", "shards:2"])
def test_load_all_shards_equals_load_shard_for_digits(partition):
    shards = load_all_shards("digits", 5, partition, seed=3, holdout=0.2)
    assert len(shards) == 5
    for index, pair in enumerate(shards):
        assert_same_datasets(pair, load_shard("digits", f"{index}/5", partition, 3, 0.2))
        assert_same_datasets(pair, digits(f"{index}/5", partition, seed=3, holdout=0.2))


@pytest.mark.parametrize(
    "name", ["digits", "synthetic", pytest.param("fashion-mnist", marks=needs_fashion)]
)
def test_registry_matches_the_data(name):
    info = DATASETS[name]
    for part in load_shard(name, "1/3", "iid", seed=0).as_tuple():
        features, labels = part.tensors
        assert features.shape[1] == info.input_dim
        assert_labels_below(labels, info.classes)
    assert info.loader.startswith("gossiplearn.sim.datasets:")


def test_load_shard_rejects_unknown_names_and_peer_counts():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_shard("mnist", "0/1", "iid")
    with pytest.raises(ValueError, match="peers"):
        load_all_shards("digits", 0, "iid")


def test_digits_are_read_without_importing_scikit_learn_and_equal_its_loader():
    # A fresh interpreter: the daemon must not pay scikit-learn's import (memory, start-up).
    import subprocess
    import sys

    code = (
        "import sys; from gossiplearn.sim.datasets import _digits_table; t = _digits_table(); "
        "print(t.shape, 'sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["(1797,", "65)", "False"]

    from sklearn.datasets import load_digits

    from gossiplearn.sim.datasets import _digits_table

    table, bunch = _digits_table(), load_digits()
    assert np.array_equal(table[:, :-1], bunch.data)
    assert np.array_equal(table[:, -1], bunch.target)


def test_the_names_and_partitions_checked_without_loading_are_the_datasets() -> None:
    """init and sim check --dataset and --partition before importing torch
    (gossiplearn/sim/specs.py): the same names, and the same specs the split accepts."""
    from gossiplearn.sim.specs import DATASET_NAMES, check_partition

    assert tuple(DATASETS) == DATASET_NAMES
    for spec in ("iid", "dirichlet:0.3", "shards:2"):
        check_partition(spec, "digits")
        check_partition(spec, "synthetic")  # accepted there, meaning Synthetic(1, 1)
    check_partition("synthetic:0.5,1", "synthetic")
    for spec, dataset in (("foo:1", "digits"), ("shards:0", "digits"), ("dirichlet:-1", "digits"),
                          ("synthetic:1,1", "digits"), ("synthetic:a,b", "synthetic"),
                          ("foo", "synthetic")):  # fmt: skip
        with pytest.raises(ValueError, match=f"partition '{spec}' is not"):
            check_partition(spec, dataset)
