"""A small swarm of round machines on the deterministic in-memory network, for tests and
benchmarks: build it, inject faults, and check the round invariant.

:func:`build_swarm` makes ``size`` :class:`~gossiplearn.protocol.node.Node` machines with
random contributions on one :class:`~gossiplearn.sim.memnet.MemoryNetwork`;
:func:`die_at_first`, :func:`drop_frames` and :func:`resign` inject faults, :meth:`Swarm.leave`
makes a peer leave its round, :func:`record_unreachable` records the transport's reports;
:func:`check_round_invariant` checks, once the network drained:

* every honest member that finished holds the bit-identical average, equal (within the
  encoding's error) to the weighted average of the finishing group's contributions;
* every other honest member ended with RoundAborted/RoundCancelled no later than the round's
  deadline plus ``closing_grace_ms`` (a member stuck at its deadline, or that heard an ABORT
  just before it, collects the others' reports that long before it ends);
* no honest node holds group state.

Seeds are fixed and time is virtual, so a scenario replays exactly.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gossiplearn.crypto.identity import Identity
from gossiplearn.crypto.narrow import NarrowRing
from gossiplearn.protocol.envelope import Envelope, encode_envelope, verify_envelope
from gossiplearn.protocol.events import (
    Action,
    RoundAborted,
    RoundCancelled,
    RoundFinished,
    Send,
)
from gossiplearn.protocol.messages import Message
from gossiplearn.protocol.node import Node, RoundConfig
from gossiplearn.protocol.safeguards import Safeguards
from gossiplearn.protocol.shards import MAX_SHARD_BYTES
from gossiplearn.sim.memnet import MemoryNetwork, Outcome
from gossiplearn.testing.insider import Insider, resign

__all__ = [
    "SCHEMA_HASH",
    "VECTOR_LENGTH",
    "Member",
    "Round",
    "RoundDeadlineMissed",
    "Swarm",
    "Unreachable",
    "build_swarm",
    "check_finished_agree",
    "check_round_invariant",
    "die_at_first",
    "drop_frames",
    "outcomes_of",
    "reasons",
    "record_unreachable",
    "resign",
]

SCHEMA_HASH = b"\x5a" * 32
VECTOR_LENGTH = 2000
#: Sequence numbers for frames the tests forge: far above anything a node has used.
_forged_seq = itertools.count(1 << 60)


class RoundDeadlineMissed(AssertionError):
    """An honest node still held a round after its deadline: stuck, or ended late."""


# ---- the swarm ------------------------------------------------------------------------------


@dataclass
class Member:
    identity: Identity
    node: Node
    vector: np.ndarray
    weight: int


@dataclass(frozen=True)
class Round:
    group: bytes
    initiator: bytes
    deadline_ms: int


@dataclass
class Swarm:
    net: MemoryNetwork
    config: RoundConfig
    peers: dict[bytes, Member]

    @property
    def keys(self) -> list[bytes]:
        return list(self.peers)

    def start(self, initiator: bytes, candidates: Iterable[bytes] | None = None) -> Round:
        self.net.start_round(initiator, candidates)
        current = self.peers[initiator].node.current_round
        assert current is not None
        group, _, deadline_ms = current
        return Round(group, initiator, deadline_ms)

    def new_contributions(self, seed: int) -> None:
        data = np.random.default_rng(seed)
        length = next(iter(self.peers.values())).vector.size
        for peer in self.peers.values():
            peer.vector = data.normal(size=length).astype(np.float32)
            peer.weight = int(data.integers(1, self.config.max_weight + 1))
            peer.node.set_contribution(peer.vector, peer.weight, SCHEMA_HASH)

    def new_vector(self, key: bytes, rng: np.random.Generator) -> None:
        """A new random contribution for one member (same weight)."""
        peer = self.peers[key]
        peer.vector = rng.normal(size=peer.vector.size).astype(np.float32)
        peer.node.set_contribution(peer.vector, peer.weight, SCHEMA_HASH)

    def forge(self, sender: bytes, recipient: bytes, body: Message, group: bytes) -> bytes:
        """A validly signed frame from ``sender`` (the test holds every identity)."""
        return encode_envelope(
            self.peers[sender].identity,
            sender,
            recipient,
            body,
            group=group,
            seq=next(_forged_seq),
            ts=int(self.net.now_ms),
        )

    def inject(self, sender: bytes, recipient: bytes, frame: bytes) -> list[Action]:
        """Hand ``frame`` to ``recipient`` now, as if it had just arrived from ``sender``, and
        let the network carry out the node's answer like any other (its frames go out, its
        wakes are scheduled, its outcomes recorded); returns that answer for the test to
        inspect. Unlike calling ``node.receive`` directly, nothing the node does is lost:
        since round v3 a member that hears an unproven ABORT answers with its own report and
        ends only at a later wake (CLOSING)."""
        node = self.peers[recipient].node
        actions = node.receive(frame, int(self.net.now_ms), from_peer=sender)
        self.net.bytes_received[recipient] += len(frame)
        self.net._apply(recipient, actions)  # the same path as a frame the network delivered
        return actions

    def leave(self, key: bytes, reason: str = "peer_stopping") -> list[Action]:
        """``key`` leaves its round now (its driver aborts it, e.g. the daemon is stopping):
        its ABORT goes out through the network like any frame; returns the node's answer."""
        actions = self.peers[key].node.abort(reason, int(self.net.now_ms))
        self.net._apply(key, actions)
        return actions

    def deliveries_in(self, group: bytes, since: int = 0) -> list[tuple[Envelope, bytes]]:
        """Recorded (envelope, frame) pairs of ``group``, from delivery index ``since`` on."""
        pairs = [(verify_envelope(d.frame), d.frame) for d in self.net.deliveries[since:]]
        return [(envelope, frame) for envelope, frame in pairs if envelope.group == group]


def build_swarm(
    size: int = 4,
    *,
    k: int = 4,
    n: int = VECTOR_LENGTH,
    seed: int = 0,
    shard_bytes: int = MAX_SHARD_BYTES,
    max_abs_average: float = RoundConfig.max_abs_average,
    max_weight: int = 99,
    safeguards: Safeguards | None = None,
    insiders: Iterable[int] = (),
    insider_class: type[Insider] = Insider,
    remembered_groups: int = RoundConfig.remembered_groups,
    ring_bits: int = RoundConfig.ring_bits,
    clip: float = RoundConfig.clip,
    latency_ms: float = 3,
    jitter_ms: float = 5,
    **network: Any,  # loss, duplicate, record, ...: see MemoryNetwork
) -> Swarm:
    """``size`` nodes with random contributions of ``n`` floats on one network. The nodes
    at the indices ``insiders`` are :class:`~gossiplearn.testing.insider.Insider` machines
    (honest until an attack is set on them)."""
    net = MemoryNetwork(seed=seed, latency_ms=latency_ms, jitter_ms=jitter_ms, **network)
    config = RoundConfig(
        max_group_size=k,
        shard_bytes=shard_bytes,
        max_abs_average=max_abs_average,
        max_weight=max_weight,  # weighting by sample count, opted in, so weights matter
        remembered_groups=remembered_groups,
        ring_bits=ring_bits,
        clip=clip,
        safeguards=safeguards or Safeguards(),
    )
    peers = {}
    insiders = set(insiders)
    for i in range(size):
        identity = Identity(bytes([i + 1]) * 32)
        node_class = insider_class if i in insiders else Node
        node = node_class(
            identity, config, rng=random.Random(seed * 1000 + i), now_ms=int(net.now_ms)
        )
        net.add(node)
        peers[identity.public_key] = Member(identity, node, np.empty(n, np.float32), 0)
    swarm = Swarm(net, config, peers)
    swarm.new_contributions(seed)
    return swarm


# ---- faults ---------------------------------------------------------------------------------


def die_at_first(swarm: Swarm, victim: bytes, kind: str, *, sent: bool) -> None:
    """``victim`` crashes at its first ``kind`` frame: just after sending it if ``sent``,
    else just before (the frame is lost). A dead peer sends, receives and ticks no more."""

    def intercept(sender: bytes, send: Send) -> list[bytes] | None:
        if sender != victim or send.kind != kind:
            return None
        swarm.net.kill(victim)
        return None if sent else []

    swarm.net.intercept = intercept


def drop_frames(swarm: Swarm, *, sender: bytes, kind: str, to: bytes | None = None) -> None:
    """Lose every ``kind`` frame from ``sender`` (to ``to`` only, if given); nobody dies."""

    def intercept(from_peer: bytes, send: Send) -> list[bytes] | None:
        if from_peer == sender and send.kind == kind and to in (None, send.to):
            return []
        return None

    swarm.net.intercept = intercept


@dataclass(frozen=True)
class Unreachable:
    """One transport report a node got (``Node.peer_unreachable``), and what it did."""

    node: bytes
    peer: bytes  # the peer it could not reach
    group: bytes
    at_ms: int
    phase: str | None  # its round's phase then (None: not that round's member any more)
    answer: list[Action]


def record_unreachable(swarm: Swarm) -> list[Unreachable]:
    """Record every transport report the swarm's nodes get from now on (the network reports
    a frame for a dead peer with ``report_unreachable=True``), in order."""
    reports: list[Unreachable] = []
    for key, member in swarm.peers.items():
        node = member.node
        original = node.peer_unreachable

        def recording(
            peer: bytes,
            group: bytes,
            now_ms: int,
            *,
            key: bytes = key,
            node: Node = node,
            original: Callable[[bytes, bytes, int], list[Action]] = original,
        ) -> list[Action]:
            current = node._group  # the phase it hears it in
            phase = current.phase.value if current is not None and current.id == group else None
            answer = original(peer, group, now_ms)
            reports.append(Unreachable(key, peer, group, now_ms, phase, answer))
            return answer

        node.peer_unreachable = recording  # type: ignore[method-assign,assignment]
    return reports


# ---- the invariant --------------------------------------------------------------------------


def check_finished_agree(swarm: Swarm, finished: dict[bytes, RoundFinished]) -> None:
    first = next(iter(finished.values()))
    members = first.members
    assert set(finished) <= set(members)
    for outcome in finished.values():
        assert outcome.members == members
        assert outcome.total_weight == first.total_weight
        assert np.array_equal(outcome.average, first.average)
    weights = [swarm.peers[m].weight for m in members]
    assert first.total_weight == sum(weights)
    weighted = sum(
        w * swarm.peers[m].vector.astype(np.float64) for m, w in zip(members, weights, strict=True)
    )
    expected = weighted / sum(weights)
    # m roundings of 2^-(f+1) in the encoding of (w_i / W) x_i; in a narrow ring, m
    # stochastic roundings of less than one unit each (crypto/narrow.py).
    m = len(members)
    config = swarm.config
    if config.ring_bits == 32:
        tolerance = m * 2.0 ** -(config.frac_bits + 1)
    else:
        tolerance = m * NarrowRing(config.ring_bits, m, int(math.log2(config.clip))).unit
    np.testing.assert_allclose(first.average, expected, rtol=1e-6, atol=tolerance)


def check_round_invariant(
    swarm: Swarm, rnd: Round, *, malicious: Sequence[bytes] = ()
) -> dict[bytes, Outcome]:
    """Check the round invariant after the network drained; returns each honest node's
    outcome for the round. Honest: alive and not in ``malicious``. Deadline violations
    (a missing, late or stuck ending) raise :class:`RoundDeadlineMissed`, checked last."""
    net = swarm.net
    assert net.idle, "run the network until it drains first"
    honest = [key for key in swarm.peers if key not in net.dead and key not in malicious]
    outcomes: dict[bytes, Outcome] = {}
    for key in honest:
        mine = [o for o in net.outcomes[key] if o.group == rnd.group]
        assert len(mine) <= 1, "one outcome per group"
        if mine:
            outcomes[key] = mine[0]
    finished = {k: o for k, o in outcomes.items() if isinstance(o, RoundFinished)}
    if finished:
        check_finished_agree(swarm, finished)
    for outcome in outcomes.values():
        assert isinstance(outcome, RoundFinished | RoundAborted | RoundCancelled)
        assert outcome.group == rnd.group

    # A round that fails for a reason nobody can prove (a deadline passed, an ABORT without a
    # proof) does not end at once: the member enters CLOSING and collects the others' reports
    # for closing_grace_ms (protocol/endings.py). The latest such a member can enter CLOSING
    # is its own deadline (never later than the initiator's, rnd.deadline_ms), so the latest
    # an honest member may end is the deadline plus that grace.
    latest_ms = rnd.deadline_ms + swarm.config.closing_grace_ms
    missed = [
        f"{key.hex()[:8]}: {type(o).__name__}({getattr(o, 'reason', '')}) ended "
        f"{o.stats.ended_ms - rnd.deadline_ms} ms after the deadline "
        f"(allowed: closing_grace_ms = {swarm.config.closing_grace_ms})"
        for key, o in outcomes.items()
        if o.stats.ended_ms > latest_ms
    ]
    if rnd.initiator in honest and rnd.initiator not in outcomes:
        missed.append(f"initiator {rnd.initiator.hex()[:8]} never ended the round")
    missed += [f"{key.hex()[:8]} is still busy" for key in honest if swarm.peers[key].node.busy]
    if missed:
        raise RoundDeadlineMissed("; ".join(missed))
    return outcomes


def outcomes_of(swarm: Swarm, rnd: Round) -> list[Outcome]:
    """Every node's outcomes for ``rnd``, dead or alive."""
    return [o for key in swarm.keys for o in swarm.net.outcomes[key] if o.group == rnd.group]


def reasons(outcomes: dict[bytes, Outcome]) -> dict[bytes, str]:
    return {key: getattr(o, "reason", "finished") for key, o in outcomes.items()}
