"""Built-in datasets and their non-IID partitions across peers.

Datasets ship inside installed packages (no network). A dataset function such as
:func:`digits` is a data loader in the daemon's sense (``"gossiplearn.sim.datasets:digits"``):
each peer calls it with its own shard string, and because the partition depends only on the
seed, peers in different processes get disjoint shards that together cover the dataset.
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import torch
from torch.utils.data import TensorDataset

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


def _partition(spec: str, labels: np.ndarray, shards: int, seed: int) -> list[np.ndarray]:
    """Apply a partition spec: ``"iid"`` or ``"dirichlet:ALPHA"``."""
    if spec == "iid":
        # Two samples per shard at least, so each can hold out a validation sample.
        _check_shards(len(labels), shards, 2)
        return iid_partition(len(labels), shards, seed)
    kind, _, alpha_text = spec.partition(":")
    if kind == "dirichlet":
        try:
            alpha = float(alpha_text)
        except ValueError:
            alpha = math.nan
        if alpha > 0 and math.isfinite(alpha):
            min_size = max(2, min(DEFAULT_MIN_SHARD_SIZE, len(labels) // shards))
            return dirichlet_partition(labels, shards, alpha, seed, min_size=min_size)
    raise ValueError(f"partition {spec!r} is not 'iid' or 'dirichlet:ALPHA' with ALPHA > 0")


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 8x8 digit images as float32 in [0, 1] and int64 labels (read-only, cached)."""
    # Imported here: scikit-learn is slow to import and only this dataset needs it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    features = (np.asarray(bunch.data, dtype=np.float32) / 16.0).astype(np.float32)
    labels = np.asarray(bunch.target, dtype=np.int64)
    features.flags.writeable = False
    labels.flags.writeable = False
    return features, labels


def _holdout_split(
    indices: np.ndarray, holdout: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Randomly hold out ``holdout`` of ``indices`` (at least one, never all): (train, val)."""
    if len(indices) < 2:
        raise ValueError("a shard needs at least 2 samples to hold one out")
    shuffled = rng.permutation(indices)
    held_out = min(max(round(holdout * len(indices)), 1), len(indices) - 1)
    return np.sort(shuffled[held_out:]), np.sort(shuffled[:held_out])


def digits(
    shard: str = "0/1",
    partition: str = "dirichlet:0.3",
    seed: int = 0,
    holdout: float = 0.25,
) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's handwritten digits (64 features, 10 classes): one peer's shard.

    All samples are split across the N shards by ``partition`` (seeded, so every process
    computes the same split), then ``holdout`` of shard i is held out as the peer's personal
    validation set, which thus follows the shard's own label distribution.
    """
    index, count = parse_shard(shard)
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    features, labels = _digits_arrays()
    mine = _partition(partition, labels, count, seed)[index]
    # Seeded by the shard too, so peers' holdouts are independent draws.
    train, validation = _holdout_split(mine, holdout, np.random.default_rng([seed, index]))

    def subset(rows: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(features[rows]), torch.from_numpy(labels[rows]))

    return subset(train), subset(validation)
