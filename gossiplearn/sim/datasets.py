"""Built-in datasets and their non-IID partitions across peers.

Datasets come from installed packages, never the network: scikit-learn's digits, Fashion-MNIST
from the Debian package ``dataset-fashion-mnist``, and the FedProx Synthetic(alpha, beta)
generator. A dataset function such as :func:`digits` is a data loader in the daemon's sense
(``"gossiplearn.sim.datasets:digits"``): each peer calls it with its own shard string, and
because the partition depends only on the seed, peers in different processes get disjoint
shards that together cover the dataset. :data:`DATASETS` lists them with their shapes;
:func:`load_shard` and :func:`load_all_shards` load by name.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from gossiplearn.peer.learning.data import DEFAULT_VALIDATION, PeerData
from gossiplearn.sim.specs import parse_partition, parse_synthetic

__all__ = ["DATASETS", "DEFAULT_VALIDATION", "PeerData", "digits", "fashion_mnist", "synthetic"]

# Dirichlet shards are topped up to this many samples (if the dataset is large enough).
DEFAULT_MIN_SHARD_SIZE = 10
_SHARD_PATTERN = re.compile(r"(\d+)/(\d+)")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N``."""
    match = _SHARD_PATTERN.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"shard {text!r} is not of the form 'i/N' (e.g. '0/4')")
    index, count = int(match[1]), int(match[2])
    if not 0 <= index < count:
        raise ValueError(f"shard {text!r}: need 0 <= i < N")
    return index, count


def _check_shards(n: int, shards: int, min_size: int) -> None:
    if shards < 1:
        raise ValueError("shards must be >= 1")
    if n < shards * min_size:
        raise ValueError(
            f"{n} samples cannot give {shards} shards of at least {min_size} samples each"
        )


def dirichlet_partition(
    labels: np.ndarray,
    shards: int,
    alpha: float,
    seed: int,
    min_size: int = DEFAULT_MIN_SHARD_SIZE,
) -> list[np.ndarray]:
    """Label-skewed split: for each class, shard proportions are drawn from Dir(alpha).

    Small ``alpha`` gives each shard few classes; large ``alpha`` tends to IID. Afterwards any
    shard below ``min_size`` samples is topped up with samples moved at random from the
    currently largest shard, repeated until every shard has ``min_size``. (Re-drawing until
    every shard is big enough is the common alternative, but with small alpha and many shards
    it may practically never succeed.) Deterministic in ``seed``; returns one sorted index
    array per shard, together a partition of ``range(len(labels))``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError("labels must be a 1-D array")
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a positive number, got {alpha}")
    if min_size < 1:
        raise ValueError("min_size must be >= 1")
    _check_shards(len(labels), shards, min_size)
    rng = np.random.default_rng(seed)

    owner = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        proportions = rng.dirichlet(np.full(shards, alpha))
        bounds = np.minimum(np.cumsum(proportions) * len(members), len(members)).astype(np.int64)
        bounds[-1] = len(members)  # float rounding must not drop the last samples
        owner[members] = np.repeat(np.arange(shards), np.diff(bounds, prepend=0))

    sizes = np.bincount(owner, minlength=shards)
    while sizes.min() < min_size:
        needy, donor = int(sizes.argmin()), int(sizes.argmax())
        # The largest shard always has more than min_size while another has fewer (the total
        # is at least shards * min_size), so at least one sample moves each time.
        count = min(min_size - sizes[needy], sizes[donor] - min_size)
        moved = rng.choice(np.flatnonzero(owner == donor), size=count, replace=False)
        owner[moved] = needy
        sizes[needy] += count
        sizes[donor] -= count
    return [np.flatnonzero(owner == shard) for shard in range(shards)]


def iid_partition(n: int, shards: int, seed: int) -> list[np.ndarray]:
    """Uniformly random split of ``range(n)`` into ``shards`` sorted parts of near-equal size."""
    _check_shards(n, shards, 1)
    permutation = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(permutation, shards)]


def shards_partition(
    labels: np.ndarray, shards: int, classes_per_shard: int, seed: int
) -> list[np.ndarray]:
    """McMahan et al.'s pathological split: each shard gets about ``classes_per_shard`` classes.

    Sample indices are sorted by label (ties in a seeded random order), cut into
    ``shards * classes_per_shard`` contiguous pieces of near-equal size, and each shard gets
    ``classes_per_shard`` pieces picked by a seeded permutation. A piece straddling a class
    boundary adds a class, two pieces of one class remove one. Deterministic in ``seed``;
    returns one sorted, non-empty index array per shard, together a partition of
    ``range(len(labels))``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError("labels must be a 1-D array")
    if classes_per_shard < 1:
        raise ValueError(f"classes per shard must be >= 1, got {classes_per_shard}")
    if shards < 1:
        raise ValueError("shards must be >= 1")
    pieces = shards * classes_per_shard
    if pieces > len(labels):
        raise ValueError(
            f"{len(labels)} samples cannot give {shards} shards of {classes_per_shard} "
            f"non-empty pieces each ({pieces} pieces)"
        )
    rng = np.random.default_rng(seed)
    # Shuffle first, then sort stably: within a class the order is random, so which samples
    # of a class land in which piece is seeded rather than fixed by the dataset's order.
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    cut = np.array_split(by_label, pieces)
    owner_order = rng.permutation(pieces).reshape(shards, classes_per_shard)
    return [np.sort(np.concatenate([cut[piece] for piece in row])) for row in owner_order]


def _partition(spec: str, labels: np.ndarray, shards: int, seed: int) -> list[np.ndarray]:
    """Apply a partition spec: ``"iid"``, ``"dirichlet:ALPHA"`` or ``"shards:C"``."""
    kind, argument = parse_partition(spec)
    if kind == "iid":
        # Two samples per shard at least, so each can hold out a validation sample.
        _check_shards(len(labels), shards, 2)
        return iid_partition(len(labels), shards, seed)
    if kind == "dirichlet":
        min_size = max(2, min(DEFAULT_MIN_SHARD_SIZE, len(labels) // shards))
        return dirichlet_partition(labels, shards, argument, seed, min_size=min_size)
    _check_shards(len(labels), shards, 2)  # as for iid: room for a held-out sample
    return shards_partition(labels, shards, int(argument), seed)


def _holdout_split(
    indices: np.ndarray, holdout: float, rng: np.random.Generator, validation: float = 0.0
) -> tuple[np.ndarray, ...]:
    """Randomly hold out ``holdout`` of ``indices`` (at least one, never all) as the test set:
    (train, test); with ``validation`` > 0, that fraction of ``indices`` is also held out of
    the training part (at least one, leaving one to train): (train, validation, test)."""
    minimum = 3 if validation else 2
    if len(indices) < minimum:
        raise ValueError(f"a shard needs at least {minimum} samples to hold out a test set")
    shuffled = rng.permutation(indices)
    tested = min(max(round(holdout * len(indices)), 1), len(indices) - (minimum - 1))
    test, rest = shuffled[:tested], shuffled[tested:]
    if not validation:
        return np.sort(rest), np.sort(test)
    validated = min(max(round(validation * len(indices)), 1), len(rest) - 1)
    return np.sort(rest[validated:]), np.sort(rest[:validated]), np.sort(test)


def _check_holdout(holdout: float, validation: float = 0.0) -> None:
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    if not 0 <= validation < 1 - holdout:
        raise ValueError(f"validation must be in [0, 1 - holdout), got {validation}")


def _tensor_dataset(features: np.ndarray, labels: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.from_numpy(features), torch.from_numpy(labels))


# ---- pooled datasets: one array of samples, split across peers by a partition spec ----------


@dataclass(frozen=True, eq=False)
class _Pool:
    """A whole dataset, decoded once per process (arrays read-only).

    ``raw`` keeps the compact stored dtype (Fashion-MNIST as uint8: 55 MB rather than 220 MB
    of float32 per process); a shard's rows become float32 in [0, 1] (``raw / scale``) only
    when it is cut. Compared and hashed by identity, so a pool can key the partition cache.
    """

    raw: np.ndarray
    labels: np.ndarray
    scale: float

    def subset(self, rows: np.ndarray) -> TensorDataset:
        features = self.raw[rows].astype(np.float32) / np.float32(self.scale)
        return _tensor_dataset(features, self.labels[rows])


def _read_only(*arrays: np.ndarray) -> None:
    for array in arrays:
        array.flags.writeable = False


@functools.lru_cache(maxsize=16)
def _pool_partition(pool: _Pool, spec: str, shards: int, seed: int) -> tuple[np.ndarray, ...]:
    """The pool's split, cached: an in-process simulation asks for all N shards of one split,
    which must not cost N partitions (the Dirichlet split of 70,000 samples is not free)."""
    parts = tuple(_partition(spec, pool.labels, shards, seed))
    _read_only(*parts)
    return parts


def _pool_shard(
    load_pool: Callable[[], _Pool],
    shard: str,
    partition: str,
    seed: int,
    holdout: float,
    validation: float = 0.0,
) -> tuple[TensorDataset, ...]:
    """One peer's (train[, validation], test) of a pooled dataset, as :func:`digits` says.

    The arguments are checked before ``load_pool`` runs, so a typo fails before a slow decode.
    """
    index, count = parse_shard(shard)
    _check_holdout(holdout, validation)
    pool = load_pool()
    mine = _pool_partition(pool, partition, count, seed)[index]
    # Seeded by the shard too, so peers' holdouts are independent draws.
    parts = _holdout_split(mine, holdout, np.random.default_rng([seed, index]), validation)
    return tuple(pool.subset(rows) for rows in parts)


@functools.lru_cache(maxsize=1)
def _digits_pool() -> _Pool:
    """The 1797 8x8 digit images (pixel values 0..16) and their int64 labels."""
    table = _digits_table()
    raw = table[:, :-1].astype(np.uint8)  # integers 0..16, stored as floats
    labels = table[:, -1].astype(np.int64)
    _read_only(raw, labels)
    return _Pool(raw, labels, scale=16.0)


def _digits_table() -> np.ndarray:
    """scikit-learn's digits.csv.gz (64 pixel columns, then the label), read the way its
    ``load_digits`` reads it but without importing scikit-learn: that import alone costs a
    daemon ~80 MB of resident memory and a second of start-up. Found through the import
    system (``find_spec`` does not import the package); ``load_digits`` if the file moved."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as file:
                return np.loadtxt(file, delimiter=",")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.column_stack([bunch.data, bunch.target])


def digits(
    shard: str = "0/1",
    partition: str = "dirichlet:0.3",
    seed: int = 0,
    holdout: float = 0.25,
    validation: float = 0.0,
) -> tuple[TensorDataset, ...]:
    """scikit-learn's handwritten digits (64 features in [0, 1], 10 classes): one peer's shard.

    All samples are split across the N shards by ``partition`` (``"iid"``,
    ``"dirichlet:ALPHA"`` or ``"shards:C"``; seeded, so every process computes the same
    split), then ``holdout`` of shard i is held out as the peer's personal test set, which
    thus follows the shard's own label distribution: ``(train, test)``. With ``validation``
    > 0, that fraction of the shard is also held out of training as a validation set (the
    daemon decides on it whether a group average helps): ``(train, validation, test)``.
    """
    return _pool_shard(_digits_pool, shard, partition, seed, holdout, validation)


# ---- Fashion-MNIST from the Debian package dataset-fashion-mnist ---------------------------

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
# (images, labels) file pairs; train and test are pooled, peers split the 70,000 samples.
_FASHION_MNIST_FILES = (
    ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
)
_FASHION_MNIST_SIDE = 28
_FASHION_MNIST_CLASSES = 10


class DatasetUnavailable(RuntimeError):
    """A dataset's files are not installed; the one-line message says how to install them."""


class IdxFormatError(ValueError):
    """A file is not a well-formed IDX file of the expected shape."""


def read_idx(path: str | os.PathLike[str], ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (LeCun's MNIST format), gzipped or not.

    The format is a big-endian magic ``0x000008NN`` (0x08: unsigned bytes, NN: ``ndim``),
    ``ndim`` big-endian uint32 sizes, then exactly ``prod(sizes)`` bytes. Anything else (a
    different magic, a truncated header or payload, trailing bytes, corrupt gzip data) raises
    :class:`IdxFormatError` naming the file. Returns a read-only uint8 array of those sizes.
    """
    if not 1 <= ndim <= 255:
        raise ValueError(f"ndim must be in 1..255, got {ndim}")
    data = Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip's magic; IDX files start with two zero bytes instead
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise IdxFormatError(f"{path}: corrupt gzip data ({exc})") from exc
    expected = 0x0800 | ndim
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{path}: {len(data)} bytes, too short for an IDX header")
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected:
        raise IdxFormatError(
            f"{path}: IDX magic 0x{magic:08x}, expected 0x{expected:08x} "
            f"(unsigned bytes, {ndim} dimensions)"
        )
    sizes = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != math.prod(sizes):
        raise IdxFormatError(
            f"{path}: sizes {sizes} need {math.prod(sizes)} data bytes, "
            f"found {len(data) - header} (truncated or corrupt)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(sizes)


@functools.lru_cache(maxsize=2)
def _fashion_mnist_pool(root: str) -> _Pool:
    """Fashion-MNIST's train and test sets pooled: 70,000 images of 784 pixels, 10 classes."""
    directory = Path(root)
    if not all((directory / name).is_file() for pair in _FASHION_MNIST_FILES for name in pair):
        raise DatasetUnavailable(
            f"fashion-mnist not found in {root}: install it with "
            "'apt-get install dataset-fashion-mnist' (or 'make bench')"
        )
    images, labels = [], []
    for image_name, label_name in _FASHION_MNIST_FILES:
        part_images = read_idx(directory / image_name, 3)
        part_labels = read_idx(directory / label_name, 1)
        if part_images.shape[1:] != (_FASHION_MNIST_SIDE, _FASHION_MNIST_SIDE):
            raise IdxFormatError(
                f"{directory / image_name}: images are {part_images.shape[1:]}, expected 28x28"
            )
        if len(part_labels) != len(part_images):
            raise IdxFormatError(
                f"{directory / label_name}: {len(part_labels)} labels for "
                f"{len(part_images)} images in {image_name}"
            )
        if len(part_labels) and part_labels.max() >= _FASHION_MNIST_CLASSES:
            raise IdxFormatError(f"{directory / label_name}: a label is not in 0..9")
        images.append(part_images.reshape(len(part_images), -1))
        labels.append(part_labels)
    raw = np.concatenate(images)
    pooled_labels = np.concatenate(labels).astype(np.int64)
    _read_only(raw, pooled_labels)
    return _Pool(raw, pooled_labels, scale=255.0)


def fashion_mnist(
    shard: str = "0/1",
    partition: str = "dirichlet:0.3",
    seed: int = 0,
    holdout: float = 0.25,
    root: str | os.PathLike[str] = FASHION_MNIST_ROOT,
    validation: float = 0.0,
) -> tuple[TensorDataset, ...]:
    """Fashion-MNIST (784 features in [0, 1], 10 classes): one peer's shard.

    Reads the IDX files of the Debian package ``dataset-fashion-mnist`` under ``root`` and
    pools train and test (70,000 samples; peers hold out their own validation sets). The
    decoded arrays are cached per ``root`` for the process. ``partition``, ``holdout`` and
    ``validation`` work as for :func:`digits`. Raises :class:`DatasetUnavailable` if the files are missing and
    :class:`IdxFormatError` if one is corrupt.
    """
    return _pool_shard(
        functools.partial(_fashion_mnist_pool, os.fspath(root)),
        shard,
        partition,
        seed,
        holdout,
        validation,
    )


# ---- FedProx Synthetic(alpha, beta): generated per device ----------------------------------


def synthetic_parameters(
    partition: str, alpha: float = 1.0, beta: float = 1.0
) -> tuple[float, float]:
    """``(alpha, beta)`` from a partition spec ``"synthetic:ALPHA,BETA"``.

    Any spec not starting with ``"synthetic:"`` (``"iid"``, ``"dirichlet:0.3"``, ...) means
    nothing for generated data and leaves the given ``alpha`` and ``beta``.
    """
    if not partition.startswith("synthetic:"):
        return alpha, beta
    return parse_synthetic(partition)


def _synthetic_device(
    rng: np.random.Generator,
    alpha: float,
    beta: float,
    dimension: int,
    classes: int,
    min_samples: int,
    max_samples: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One device's (float32 features, int64 labels); see :func:`synthetic` for the model."""
    count = min(int(rng.lognormal(4.0, 2.0)) + min_samples, max_samples)
    model_mean = rng.normal(0.0, alpha)  # u_k
    input_mean = rng.normal(0.0, beta)  # B_k
    weights = rng.normal(model_mean, 1.0, size=(classes, dimension))
    bias = rng.normal(model_mean, 1.0, size=classes)
    center = rng.normal(input_mean, 1.0, size=dimension)  # v_k
    # Diagonal covariance, so sampling is a per-coordinate scaling (no Cholesky needed).
    std = np.arange(1, dimension + 1, dtype=np.float64) ** -0.6  # sqrt(j^-1.2)
    features = center + rng.standard_normal((count, dimension)) * std
    # softmax is monotone: its argmax is the argmax of the logits.
    labels = np.argmax(features @ weights.T + bias, axis=1)
    return features.astype(np.float32), labels.astype(np.int64)


def synthetic(
    shard: str = "0/1",
    alpha: float = 1.0,
    beta: float = 1.0,
    seed: int = 0,
    holdout: float = 0.25,
    dimension: int = 60,
    classes: int = 10,
    min_samples: int = 50,
    max_samples: int = 1000,
    partition: str | None = None,
    validation: float = 0.0,
) -> tuple[TensorDataset, ...]:
    """FedProx's Synthetic(alpha, beta) data of device i for shard ``"i/N"``.

    As in Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys 2020) and its
    generator script: device k draws ``u_k ~ N(0, alpha)`` and ``B_k ~ N(0, beta)`` (second
    arguments are standard deviations, as the script passes them to ``np.random.normal``),
    a model ``W_k ~ N(u_k, 1)`` of shape ``classes x dimension`` and ``b_k ~ N(u_k, 1)``,
    an input mean ``v_k`` with entries ``~ N(B_k, 1)``; then ``x ~ N(v_k, Sigma)`` with
    diagonal ``Sigma_jj = j^-1.2`` and ``y = argmax softmax(W_k x + b_k)``. alpha controls how
    much local models differ, beta how much local inputs differ; (0, 0) is still non-IID.

    The device holds ``min(floor(lognormal(4, 2)) + min_samples, max_samples)`` samples: the
    script's ``lognormal(4, 2) + 50``, capped (default 1000) because its heavy tail reaches
    tens of thousands, which at 1000 devices would dominate time and memory.

    Device i's data depends only on ``(seed, i)`` (a generator seeded with ``[seed, i]``),
    never on N, so device i is generated alone, in any process, for any N. ``holdout`` of it
    is then held out (same generator, after the data) as the device's test set, and
    ``validation`` of it as a validation set, as for :func:`digits`.
    ``partition``, if of the form ``"synthetic:ALPHA,BETA"``, overrides ``alpha`` and
    ``beta``; other specs are ignored. It lets this loader take the same options
    (shard, partition, seed, holdout) as the pooled ones.
    """
    index, _ = parse_shard(shard)
    _check_holdout(holdout, validation)
    if partition is not None:
        alpha, beta = synthetic_parameters(partition, alpha, beta)
    if not all(value >= 0 and math.isfinite(value) for value in (alpha, beta)):
        raise ValueError(f"alpha and beta must be finite and >= 0, got {alpha}, {beta}")
    if dimension < 1 or classes < 2:
        raise ValueError(f"need dimension >= 1 and classes >= 2, got {dimension}, {classes}")
    if not 2 <= min_samples <= max_samples:
        raise ValueError(f"need 2 <= min_samples <= max_samples, got {min_samples}, {max_samples}")
    rng = np.random.default_rng([seed, index])
    features, labels = _synthetic_device(
        rng, alpha, beta, dimension, classes, min_samples, max_samples
    )
    parts = _holdout_split(np.arange(len(labels)), holdout, rng, validation)
    return tuple(_tensor_dataset(features[rows], labels[rows]) for rows in parts)


# ---- registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """A built-in dataset: its loader spec (``"module:function"``) and model shapes.

    Every loader takes the options ``shard``, ``partition``, ``seed``, ``holdout`` and
    ``validation``.
    """

    loader: str
    input_dim: int
    classes: int


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("gossiplearn.sim.datasets:digits", 64, 10),
    "fashion-mnist": DatasetInfo("gossiplearn.sim.datasets:fashion_mnist", 784, 10),
    "synthetic": DatasetInfo("gossiplearn.sim.datasets:synthetic", 60, 10),
}


def load_shard(
    name: str,
    shard: str,
    partition: str,
    seed: int = 0,
    holdout: float = 0.25,
    validation: float = 0.0,
) -> PeerData:
    """One peer's data of the built-in dataset ``name`` (its test set is also its validation
    set when ``validation`` is 0).

    ``partition`` is ``"iid"``, ``"dirichlet:ALPHA"`` or ``"shards:C"`` for digits and
    fashion-mnist; for synthetic it is ``"synthetic:ALPHA,BETA"``, any other value meaning
    Synthetic(1, 1).
    """
    # Imported here: the daemon's loader resolution, shared so names resolve identically.
    from gossiplearn.peer.learning.data import peer_data, resolve

    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    loader = resolve(DATASETS[name].loader)
    result = loader(
        shard=shard, partition=partition, seed=seed, holdout=holdout, validation=validation
    )
    return peer_data(result)


def load_all_shards(
    name: str,
    peers: int,
    partition: str,
    seed: int = 0,
    holdout: float = 0.25,
    validation: float = 0.0,
) -> list[PeerData]:
    """Every peer's data for ``peers`` peers, identical to :func:`load_shard`.

    The split is computed once (pooled datasets cache it), not once per peer.
    """
    if peers < 1:
        raise ValueError(f"peers must be >= 1, got {peers}")
    return [
        load_shard(name, f"{i}/{peers}", partition, seed, holdout, validation) for i in range(peers)
    ]
