"""The secure sum in a narrow ring (16 or 8 bits): the same round, half or a quarter of the
bytes, an average within one unit per member of the true one, and every defence in place."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gossiplearn.crypto.narrow import NarrowRing
from gossiplearn.protocol.envelope import verify_envelope
from gossiplearn.protocol.events import RoundAborted, RoundCancelled, RoundFinished
from gossiplearn.protocol.messages import Busy, Part
from gossiplearn.protocol.node import Node, RoundConfig
from gossiplearn.testing.chaos import run_chaos
from gossiplearn.testing.insider import GarbageParts, Insider
from gossiplearn.testing.swarm import SCHEMA_HASH, build_swarm, check_round_invariant


@pytest.mark.parametrize(("bits", "clip"), [(16, 8.0), (8, 8.0)])
def test_a_round_in_a_narrow_ring_agrees_on_the_true_average(bits: int, clip: float) -> None:
    swarm = build_swarm(4, k=4, n=5_000, ring_bits=bits, clip=clip, max_weight=5, record=True)
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()
    outcomes = check_round_invariant(swarm, rnd)  # bit-identical, within m units of the truth
    assert {type(o) for o in outcomes.values()} == {RoundFinished}
    parts = [verify_envelope(d.frame).body for d in swarm.net.deliveries if d.kind == "PART"]
    assert {p.shard.dtype for p in parts if isinstance(p, Part)} == {f"u{bits // 8}"}


def part_bytes(bits: int) -> int:
    swarm = build_swarm(4, k=4, n=200_000, ring_bits=bits, clip=8.0, max_weight=1, record=True)
    swarm.start(swarm.keys[0])
    swarm.net.run()
    return sum(len(d.frame) for d in swarm.net.deliveries if d.kind in ("PART", "REDUCED"))


def test_sixteen_bits_halve_the_bytes_of_a_round_and_eight_quarter_them() -> None:
    full = part_bytes(32)
    assert part_bytes(16) / full == pytest.approx(0.5, abs=0.01)
    assert part_bytes(8) / full == pytest.approx(0.25, abs=0.01)


def test_extreme_contributions_never_wrap_the_narrow_sum() -> None:
    # Every member near the clip (just under the plausible 0.9 clip), shares as unequal as
    # the cap allows: the sum stays in range by construction (crypto/narrow.py), so the
    # average is that value, not a wrapped one.
    swarm = build_swarm(3, k=3, n=1_000, ring_bits=8, clip=1.0, max_weight=1_000)
    for i, peer in enumerate(swarm.peers.values()):
        peer.vector = np.full(1_000, 0.85, np.float32)
        peer.weight = 1 if i else 1_000
        peer.node.set_contribution(peer.vector, peer.weight, SCHEMA_HASH)
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()
    outcomes = check_round_invariant(swarm, rnd)
    average = next(iter(outcomes.values())).average  # type: ignore[union-attr]
    unit = NarrowRing(8, 3, 0).unit
    assert np.all(np.abs(average - 0.85) <= 3 * unit)


def test_a_peer_on_another_ring_declines() -> None:
    swarm = build_swarm(3, k=3, ring_bits=16, record=True)
    a, b, _ = swarm.keys
    other = swarm.peers[b]
    config = RoundConfig(max_group_size=3, max_weight=swarm.config.max_weight, ring_bits=32)
    node = Node(other.identity, config, now_ms=int(swarm.net.now_ms))
    node.set_contribution(other.vector, other.weight, SCHEMA_HASH)
    swarm.net.nodes[b] = node
    rnd = swarm.start(a)
    swarm.net.run()
    answers = [verify_envelope(d.frame).body for d in swarm.net.deliveries if d.sender == b]
    assert answers == [Busy("params_mismatch")]
    assert isinstance(swarm.net.outcomes[a][-1], RoundCancelled)
    assert swarm.net.outcomes[a][-1].group == rnd.group


def test_garbage_in_a_narrow_ring_is_implausible() -> None:
    # There is no wider range for garbage to fall into: the plausible average is held to 0.9
    # of the clip, which random ring elements exceed almost surely (and honest models never).
    swarm = build_swarm(4, k=4, n=2_000, ring_bits=16, clip=8.0, insiders=[3])
    insider = swarm.peers[swarm.keys[3]].node
    assert isinstance(insider, Insider)
    insider.attack = GarbageParts()
    rnd = swarm.start(swarm.keys[0])
    swarm.net.run()
    outcomes = check_round_invariant(swarm, rnd, malicious=[swarm.keys[3]])
    assert {o.reason for o in outcomes.values() if isinstance(o, RoundAborted)} == {
        "implausible_average"
    }
    assert len(outcomes) == 3
    assert math.isclose(0.9 * NarrowRing(16, 4, 3).clip, 7.2)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_chaos_insider_breaks_no_property_in_a_sixteen_bit_ring(seed: int) -> None:
    report = run_chaos(seed, 300, ring_bits=16)
    assert report.with_insider >= 75 and report.honest_only_finished == report.honest_only
