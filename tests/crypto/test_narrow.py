"""Narrow rings (Z/2^16, Z/2^8): stochastic rounding is unbiased and at most one unit off,
and a group's sum never wraps, whatever its members' values and shares."""

from __future__ import annotations

import numpy as np
import pytest

from gossiplearn.crypto.masks import apply_pairwise_masks
from gossiplearn.crypto.narrow import NarrowRing


@pytest.mark.parametrize("bits", [16, 8])
def test_the_scale_leaves_room_for_every_member_to_round_up(bits: int) -> None:
    ring = NarrowRing(bits, 4, 3)
    assert ring.full_share == 2 ** (bits - 1) - 1 - 4
    assert ring.unit == pytest.approx(8.0 / ring.full_share)
    assert ring.unsigned is {16: np.uint16, 8: np.uint8}[bits]


@pytest.mark.parametrize("bits", [16, 8])
@pytest.mark.parametrize("members", [3, 4, 16])
def test_the_sum_of_extreme_shares_never_wraps(bits: int, members: int) -> None:
    # Every member at +clip (or -clip, or beyond), weights as unequal as they get: the masked
    # ring sum decodes to the true sum, up to one unit per member, never wrapped around.
    rng = np.random.default_rng(bits * 100 + members)
    ring = NarrowRing(bits, members, 0)  # clip 1.0
    weights = np.array([1] * (members - 1) + [10_000], dtype=np.float64)
    shares = weights / weights.sum()
    for sign in (1.0, -1.0):
        values = [np.full(50, sign * 5.0, np.float32) for _ in range(members)]  # beyond clip
        encoded = []
        for share, x in zip(shares, values, strict=True):
            v, clipped = ring.encode(x, float(share), rng)
            assert clipped == 50
            encoded.append(v)
        total = np.zeros(50, ring.unsigned)
        for v in encoded:
            np.add(total, v, out=total)
        decoded = ring.decode(total, np.empty(50, np.float32))
        assert np.all(np.abs(decoded - sign * 1.0) <= members * ring.unit + 1e-6)


@pytest.mark.parametrize("bits", [16, 8])
def test_stochastic_rounding_is_unbiased_and_at_most_one_unit_off(bits: int) -> None:
    ring = NarrowRing(bits, 4, 2)
    x = np.random.default_rng(1).uniform(-4, 4, 200_000).astype(np.float32)
    v, clipped = ring.encode(x, 0.25, np.random.default_rng(2))
    assert clipped == 0
    decoded = ring.decode(v, np.empty(x.size, np.float32))
    error = decoded.astype(np.float64) - 0.25 * x
    assert np.max(np.abs(error)) <= ring.unit * (1 + 1e-6)
    # Unbiased: the mean error is far below a unit (deterministic rounding would not be, for
    # values that sit just above a grid point).
    assert abs(error.mean()) < ring.unit * 0.01
    shifted = np.full(100_000, 0.3 * ring.unit / 0.25, np.float32)
    v2, _ = ring.encode(shifted, 0.25, np.random.default_rng(3))
    mean = ring.decode(v2, np.empty(v2.size, np.float32)).astype(np.float64).mean()
    assert mean == pytest.approx(0.3 * ring.unit, rel=0.02)


def test_masks_cancel_in_a_narrow_ring() -> None:
    ring = NarrowRing(16, 3, 3)
    rng = np.random.default_rng(0)
    xs = [rng.normal(0, 0.5, 1000).astype(np.float32) for _ in range(3)]
    seeds = {(0, 1): b"\x01" * 32, (0, 2): b"\x02" * 32, (1, 2): b"\x03" * 32}
    total = np.zeros(1000, ring.unsigned)
    for i, x in enumerate(xs):
        v, _ = ring.encode(x, 1 / 3, rng)
        mine = {j: seeds[tuple(sorted((i, j)))] for j in range(3) if j != i}
        apply_pairwise_masks(v, i, mine)
        np.add(total, v, out=total)
    decoded = ring.decode(total, np.empty(1000, np.float32))
    expected = sum(x.astype(np.float64) for x in xs) / 3
    assert np.max(np.abs(decoded - expected)) <= 3 * ring.unit


def test_a_narrow_ring_refuses_more_members_than_it_has_room_for() -> None:
    with pytest.raises(ValueError, match="too many members"):
        NarrowRing(8, 64, 0)
    with pytest.raises(ValueError, match="8 or 16"):
        NarrowRing(32, 4, 0)
