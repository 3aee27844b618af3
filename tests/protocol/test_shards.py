"""Shards: split into <= 1 MiB pieces, join back exactly, refuse every inconsistent set."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossiplearn.protocol.errors import SchemaViolation, ShardError
from gossiplearn.protocol.shards import (
    MAX_SHARD_BYTES,
    Shard,
    join_shards,
    shard_digest,
    split_shards,
)


@given(
    n=st.integers(0, 5000),
    max_bytes=st.integers(1, 4096),
    dtype=st.sampled_from([np.uint32, np.uint64, np.float32]),
)
@settings(max_examples=200)
def test_split_join_round_trip(n, max_bytes, dtype):
    array = (np.arange(n) * 7919).astype(dtype)
    shards = split_shards(array, max_bytes)
    assert all(len(s.data) <= max(max_bytes, array.itemsize) for s in shards)
    assert [s.index for s in shards] == list(range(len(shards)))
    assert all(s.total == len(shards) for s in shards)
    joined = join_shards(reversed(shards), dtype=shards[0].dtype, length=n)
    assert joined.dtype == array.dtype and np.array_equal(joined, array)


def test_default_shards_are_at_most_one_mebibyte():
    shards = split_shards(np.zeros(1_000_000, np.uint32))
    assert len(shards) == 4
    assert max(len(s.data) for s in shards) == MAX_SHARD_BYTES


def _shards(n=1000, max_bytes=400):
    return split_shards(np.arange(n, dtype=np.uint32), max_bytes)


def test_missing_shard():
    shards = _shards()
    with pytest.raises(ShardError, match="missing shards \\[2\\]"):
        join_shards(shards[:2] + shards[3:], dtype="u4", length=1000)


def test_duplicate_shard():
    shards = _shards()
    with pytest.raises(ShardError, match="duplicate"):
        join_shards(shards + [shards[1]], dtype="u4", length=1000)


def test_overlapping_shard():
    shards = _shards()
    moved = dataclasses.replace(shards[2], offset=shards[2].offset - 1)
    with pytest.raises(ShardError, match="overlaps"):
        join_shards(shards[:2] + [moved] + shards[3:], dtype="u4", length=1000)


def test_gap_between_shards():
    shards = _shards()
    moved = dataclasses.replace(shards[2], offset=shards[2].offset + 1)
    with pytest.raises(ShardError, match="gap"):
        join_shards(shards[:2] + [moved] + shards[3:], dtype="u4", length=1000)


def test_wrong_dtype():
    shards = _shards()
    with pytest.raises(ShardError, match="dtype"):
        join_shards(shards, dtype="f4", length=1000)
    mixed = split_shards(np.arange(1000, dtype=np.float32), 400)
    with pytest.raises(ShardError, match="dtype"):
        join_shards(shards[:1] + mixed[1:], dtype="u4", length=1000)


@pytest.mark.parametrize("length", [999, 1001, 0])
def test_wrong_total_length(length):
    with pytest.raises(ShardError):
        join_shards(_shards(), dtype="u4", length=length)


def test_inconsistent_totals():
    shards = _shards()
    other = split_shards(np.arange(2000, dtype=np.uint32), 400)
    with pytest.raises(ShardError, match="total"):
        join_shards(shards[:1] + other[1:3], dtype="u4", length=1000)


def test_digest_mismatch():
    shards = _shards()
    tampered_data = bytes([shards[1].data[0] ^ 1]) + shards[1].data[1:]
    tampered = dataclasses.replace(shards[1], data=tampered_data)
    with pytest.raises(ShardError, match="digest"):
        join_shards([shards[0], tampered, *shards[2:]], dtype="u4", length=1000)


def test_empty_set():
    with pytest.raises(ShardError, match="no shards"):
        join_shards([], dtype="u4", length=0)


def test_shard_checks_its_own_fields():
    data = b"\x00" * 8
    with pytest.raises(SchemaViolation):
        Shard(0, 1, 0, "u4", 3, shard_digest(data), data)  # 8 bytes is 2 x u4, not 3
    with pytest.raises(SchemaViolation):
        Shard(1, 1, 0, "u4", 2, shard_digest(data), data)  # index >= total
    with pytest.raises(SchemaViolation):
        Shard(0, 1, 0, "i8", 1, shard_digest(data), data)


def test_unsupported_array_dtype():
    with pytest.raises(ShardError):
        split_shards(np.zeros(3, np.int16))
