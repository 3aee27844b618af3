"""Admitted members that deviate from the protocol: the attacks the round defends against.

An :class:`Insider` is a round machine whose outgoing frames pass through an
:class:`Attack` before they leave: the attack drops, rewrites (re-signing them with the
insider's own key, as its own implementation of the wire format would) or adds frames. It
also keeps every frame it received, so a test can reconstruct what the insider learned. It is
a :class:`~gossiplearn.protocol.node.Node` for everything else, so the same insider runs on
the in-memory network and inside a live daemon (``Daemon(..., node_factory=...)``).

The attacks of the red teams, one class each (gossiplearn.testing.chaos searches beyond
them):

- :class:`RosterReorder`: the ROSTER in another order to one member (round v2 read x_A - x_B).
- :class:`Withhold`: withhold its own REDUCED (and CONFIRM) parts, read everyone else's, so
  each round it spoils shows it the group's sum (:func:`learned_sums`); repeated over
  overlapping groups, such sums are differenced into one member's vector.
- :class:`WeightLever`: declare a huge weight (consistently to everyone, and in its own view).
- :class:`Holder`: invite, send the ROSTER, then fall silent, holding its victims.
- :class:`ReducerEquivocation`: a different REDUCED part to one victim than to the others.
- :class:`GarbageParts` and :class:`Spoiler`: spoil rounds nobody can be blamed for.
- :class:`ConfirmSplit`: a wrong CONFIRM digest to one member after agreement.
- :class:`Framer`: reuse an old group id and relay a victim's statement from the earlier
  round as evidence of an equivocation it never made.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from gossiplearn.crypto.identity import Identity
from gossiplearn.crypto.ring import RING32, decode
from gossiplearn.protocol.aggregation import part_hasher
from gossiplearn.protocol.envelope import Envelope, encode_envelope, verify_envelope
from gossiplearn.protocol.errors import ProtocolError
from gossiplearn.protocol.events import Action, Send
from gossiplearn.protocol.evidence import EquivocationProof
from gossiplearn.protocol.messages import (
    MAX_WEIGHT,
    Abort,
    Confirm,
    Message,
    Part,
    Ready,
    Reduced,
    Roster,
)
from gossiplearn.protocol.node import Node
from gossiplearn.protocol.shards import Shard, shard_digest


def resign(
    identity: Identity, envelope: Envelope, body: Message, sender: bytes | None = None
) -> bytes:
    """``envelope`` with ``body`` instead, signed by ``identity`` as ``sender`` (default: the
    envelope's own sender), with the same recipient, group, seq and ts."""
    return encode_envelope(
        identity,
        envelope.sender if sender is None else sender,
        envelope.recipient,
        body,
        group=envelope.group,
        seq=envelope.seq,
        ts=envelope.ts,
    )


def _resent(node: Node, envelope: Envelope, body: Message) -> Send:
    """The Send of ``envelope`` rewritten to carry ``body``, signed by the insider."""
    return Send(envelope.recipient, resign(node.identity, envelope, body), body.TYPE)


def _injected(node: Insider, envelope: Envelope, body: Message) -> Send:
    """A frame added beside ``envelope`` (same recipient and group), with a fresh sequence
    number so that the receiver does not take it for a replay."""
    frame = encode_envelope(
        node.identity,
        node.public_key,
        envelope.recipient,
        body,
        group=envelope.group,
        seq=node.next_seq(),
        ts=envelope.ts,
    )
    return Send(envelope.recipient, frame, body.TYPE)


class Attack:
    """Rewrites the insider's outgoing frames. The default sends them unchanged."""

    def rewrite(self, node: Insider, sends: list[Send]) -> list[Send]:
        return sends


class Insider(Node):
    """A round machine whose frames go through ``attack``; it keeps what it received."""

    def __init__(self, *args: Any, attack: Attack | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attack = attack or Attack()
        #: The envelope of every frame this insider received (refused or not).
        self.received: list[Envelope] = []
        #: Every frame the machine produced, before the attack rewrote it.
        self.produced: list[Send] = []
        #: Every vector it was given to contribute, in order.
        self.contributions: list[np.ndarray] = []

    def set_contribution(self, vector: np.ndarray, weight: int, schema_hash: bytes) -> None:
        super().set_contribution(vector, weight, schema_hash)
        self.contributions.append(np.array(vector, dtype=np.float32, copy=True))

    def _weight_limit(self) -> int:
        # Its own implementation declares what it likes (see WeightLever).
        return MAX_WEIGHT

    def next_seq(self) -> int:
        """A fresh sequence number, for frames it adds."""
        return self._seq()

    def _through(self, actions: list[Action]) -> list[Action]:
        sends = [a for a in actions if isinstance(a, Send)]
        self.produced.extend(sends)
        rest = [a for a in actions if not isinstance(a, Send)]
        return [*self.attack.rewrite(self, sends), *rest]

    def receive(self, frame: bytes, now_ms: int, *, from_peer: bytes | None = None) -> list[Action]:
        actions = super().receive(frame, now_ms, from_peer=from_peer)
        with contextlib.suppress(ProtocolError):  # bytes it could not read teach it nothing
            self.received.append(verify_envelope(frame))
        return self._through(actions)

    def tick(self, now_ms: int) -> list[Action]:
        return self._through(super().tick(now_ms))

    def start_round(self, candidates: Iterable[bytes], now_ms: int) -> list[Action]:
        return self._through(super().start_round(candidates, now_ms))

    def peer_unreachable(self, peer: bytes, group_id: bytes, now_ms: int) -> list[Action]:
        return self._through(super().peer_unreachable(peer, group_id, now_ms))

    def abort(self, reason: str, now_ms: int) -> list[Action]:
        return self._through(super().abort(reason, now_ms))


# ---- garbage ------------------------------------------------------------------------------------


class GarbageParts(Attack):
    """Random ring elements in every PART shard it sends, well-formed and validly signed: the
    masks hide garbage frame by frame, so only the plausibility of the average gives it away."""

    def rewrite(self, node: Insider, sends: list[Send]) -> list[Send]:
        out = []
        for send in sends:
            if send.kind == Part.TYPE:
                envelope = verify_envelope(send.frame)
                body = envelope.body
                assert isinstance(body, Part)
                data = os.urandom(body.shard.array().itemsize * body.shard.length)
                shard = replace(body.shard, digest=shard_digest(data), data=data)
                send = _resent(node, envelope, Part(body.transcript, body.part, shard))
            out.append(send)
        return out


# ---- roster order -------------------------------------------------------------------------------


@dataclass
class RosterReorder(Attack):
    """As initiator, send ``target`` the ROSTER with the other members in reverse order. In
    round v2 the mask signs came from each member's own roster index: the target's and one
    other member's masks added up instead of cancelling, and the insider, their reducer, read
    the difference of their vectors."""

    target: bytes
    reordered: list[bytes] = field(default_factory=list)  # groups

    def rewrite(self, node: Insider, sends: list[Send]) -> list[Send]:
        out = []
        for send in sends:
            if send.kind == Abort.TYPE:
                continue  # its own machine sees the conflicting READYs too: it stays quiet

            if send.kind == Roster.TYPE and send.to == self.target:
                envelope = verify_envelope(send.frame)
                roster = envelope.body
                assert isinstance(roster, Roster)
                order = [0, *reversed(range(1, len(roster.members)))]
                body = replace(
                    roster,
                    members=tuple(roster.members[i] for i in order),
                    accepts=tuple(roster.accepts[i] for i in order),
                )
                send = _resent(node, envelope, body)
                self.reordered.append(envelope.group)
            out.append(send)
        return out


# ---- spoiling ---------------------------------------------------------------------------------


@dataclass
class Spoiler(Attack):
    """ABORT every round right after its READY (``when="ready"``) or send garbage PARTs
    (``when="parts"``): failures nobody can be blamed for. Round v2 struck the honest member
    that sent the ABORT; now group testing singles the spoiler out."""

    when: str = "ready"

    def rewrite(self, node: Insider, sends: list[Send]) -> list[Send]:
        if self.when == "parts":
            return GarbageParts().rewrite(node, sends)
        out = []
        for send in sends:
            if send.kind == Ready.TYPE:
                envelope = verify_envelope(send.frame)
                assert isinstance(envelope.body, Ready)
                abort = Abort(envelope.body.transcript, "peer_stopping")
                send = _resent(node, envelope, abort)
            elif send.kind in (Part.TYPE, Reduced.TYPE, Confirm.TYPE):
                continue
            out.append(send)
        return out


# ---- split after agreement ----------------------------------------------------------------------


@dataclass
class ConfirmSplit(Attack):
    """A wrong CONFIRM digest to ``victim`` only: the victim aborts while the others finish.
    The victim relays the CONFIRM it got in its ABORT, and the others, holding the insider's
    true CONFIRM, prove it equivocated."""

    victim: bytes

    def rewrite(self, node: Insider, sends: list[Send]) -> list[Send]:
        out = []
        for send in sends:
            if send.kind == Confirm.TYPE and send.to == self.victim:
                envelope = verify_envelope(send.frame)
                confirm = envelope.body
                assert isinstance(confirm, Confirm)
                wrong = bytes(b ^ 0xFF for b in confirm.digest)
                send = _resent(node, envelope, replace(confirm, digest=wrong))
            out.append(send)
        return out


# ---- framing ------------------------------------------------------------------------------------


@dataclass
class Framer(Attack):
    """Frame ``victim``: as initiator, reuse the group id of an earlier round the victim was
    in (see :class:`FramerNode`), then relay, in its own CONFIRM's evidence, the victim's
    REDUCED statement of that earlier round in place of the current one, and send every
    member an ABORT carrying a "proof" made of the victim's two statements. In round v2 a
    statement named only its group id: both were valid for one slot, a proof everyone kept,
    and the victim was refused by everyone, for good."""

    victim: bytes
    old: dict[bytes, list[bytes]] = field(default_factory=dict)  # group -> victim statements

    def rewrite(self, node: Insider, sends: list[Send]) -> list[Send]:
        for envelope in node.received:
            if envelope.sender == self.victim and envelope.type in (Reduced.TYPE, Confirm.TYPE):
                statements = self.old.setdefault(envelope.group, [])
                if envelope.statement not in statements:
                    statements.append(envelope.statement)
        out = []
        for send in sends:
            if send.kind == Confirm.TYPE:
                envelope = verify_envelope(send.frame)
                confirm = envelope.body
                assert isinstance(confirm, Confirm)
                evidence = [s for s in self.old.get(envelope.group, []) if len(s) <= 1024] or list(
                    confirm.evidence
                )
                send = _resent(node, envelope, replace(confirm, evidence=tuple(evidence[:15])))
                out.append(send)
                statements = self.old.get(envelope.group, [])
                for first, second in itertools.combinations(statements, 2):
                    proof = EquivocationProof(first, second).encode()
                    abort = Abort(confirm.transcript, "equivocation", proof)
                    out.append(_injected(node, envelope, abort))
                continue
            out.append(send)
        return out


class FramerNode(Insider):
    """An insider that, as initiator, reuses the group id of the last round it shared with
    its attack's victim (honest peers forget ended group ids after 1,024 rounds), with the
    members in the same order as then (so the victim reduces the same part)."""

    def _new_group_id(self) -> bytes:
        attack = self.attack
        if isinstance(attack, Framer) and attack.old:
            return next(reversed(attack.old))
        return super()._new_group_id()

    def _choose(self, pool: list[bytes], now_ms: int) -> tuple[bytes, ...]:
        rosters = [e.body for e in self.produced_envelopes() if isinstance(e.body, Roster)]
        order = rosters[-1].members if rosters else None
        if order is not None and set(order[1:]) <= set(pool):
            return tuple(order[1:])
        return super()._choose(pool, now_ms)

    def produced_envelopes(self) -> list[Envelope]:
        return [verify_envelope(send.frame) for send in self.produced]


# ---- 2: withholding, and what it learns -----------------------------------------------------------


@dataclass
class Withhold(Attack):
    """Never send its own REDUCED or CONFIRM: it reads the others' reduced parts (with its own,
    it holds the group's whole sum) while nobody else can finish."""

    kinds: frozenset[str] = frozenset({"REDUCED", "CONFIRM"})

    def rewrite(self, node: Insider, sends: list[Send]) -> list[Send]:
        return [send for send in sends if send.kind not in self.kinds]


@dataclass(frozen=True)
class LearnedSum:
    """A group's sum an insider holds in full: the members and the decoded sum of their
    encoded contributions ((w_i / W) x_i; with equal weights, the sum of vectors / m)."""

    members: tuple[bytes, ...]
    values: np.ndarray


def learned_sums(insider: Insider, frac_bits: int) -> dict[bytes, LearnedSum]:
    """Per group, what the insider learned: its own reduced part from what it produced, every
    other part from the REDUCED frames it received. Groups it holds only part of are left out."""
    pieces: dict[bytes, dict[int, dict[int, Shard]]] = {}
    rosters: dict[bytes, tuple[bytes, ...]] = {}
    own = [verify_envelope(send.frame) for send in insider.produced if send.kind != "PART"]
    for envelope in [*insider.received, *own]:
        body = envelope.body
        if isinstance(body, Roster):
            rosters[envelope.group] = body.members
        if isinstance(body, Reduced):
            shards = pieces.setdefault(envelope.group, {}).setdefault(body.part, {})
            shards[body.shard.index] = body.shard
    sums = {}
    for group, parts in pieces.items():
        members = rosters.get(group)
        if members is None or sorted(parts) != list(range(len(members))):
            continue
        if any(len(shards) != next(iter(shards.values())).total for shards in parts.values()):
            continue
        joined = [
            np.concatenate([shards[i].array() for i in range(len(shards))])
            for _, shards in sorted(parts.items())
        ]
        values = decode(np.concatenate(joined), frac_bits, RING32, np.float64)
        sums[group] = LearnedSum(members, values)
    return sums


# ---- 3: the weight lever ----------------------------------------------------------------------


class WeightLever(Attack):
    """Declare a huge weight, the same to everyone (no equivocation), consistently in its own
    view too (so its CONFIRM agrees): ``insider.set_contribution(vector, 2**40, ...)`` (an
    insider ignores the cap). In version 1 the honest members' scaled vectors vanished and
    its own vector became the average; in version 2 without the weight bounds, everyone's
    average is scaled down by m / W: an all-zero vector wipes every honest backbone."""


class WeightLeverNode(Insider):
    """An insider that declares ``declared_weight`` with every contribution (see
    WeightLever); make one with :func:`lever`."""

    declared_weight = MAX_WEIGHT

    def set_contribution(self, vector: np.ndarray, weight: int, schema_hash: bytes) -> None:
        super().set_contribution(np.zeros_like(vector), self.declared_weight, schema_hash)


def lever(weight: int) -> type[WeightLeverNode]:
    """A WeightLeverNode class that declares ``weight`` (a round-machine factory)."""
    return type("WeightLeverNode", (WeightLeverNode,), {"declared_weight": weight})


class ZeroContribution(Insider):
    """Plausible poisoning: brings an all-zero backbone to every round, with an honest weight.
    Every bound holds (an all-zero vector is a plausible average), so rounds finish: only
    personal acceptance stands between it and the honest members' models. (The last element
    counts its rounds, so that its own node, which spends each contribution once, takes it.)"""

    def set_contribution(self, vector: np.ndarray, weight: int, schema_hash: bytes) -> None:
        zero = np.zeros_like(vector)
        zero[-1] = np.float32(1e-6 * len(self.contributions))
        super().set_contribution(zero, weight, schema_hash)


# ---- 4: holding -----------------------------------------------------------------------------------


@dataclass
class Holder(Attack):
    """Invite, send the ROSTER, then say nothing more (not even ABORT): every member waits for
    its shares and parts until the round's deadline."""

    allowed: frozenset[str] = frozenset({"INVITE", "ROSTER", "CANCEL", "BUSY", "ACCEPT"})

    def rewrite(self, node: Insider, sends: list[Send]) -> list[Send]:
        return [send for send in sends if send.kind in self.allowed]


# ---- 5: reducer equivocation ---------------------------------------------------------------------


@dataclass
class ReducerEquivocation(Attack):
    """Its true reduced part to every member but ``victim``, which gets the part + ``delta``
    (ring units) in every element. ``same_digest``: keep the true part digest (so the victim
    finds the data does not match it) instead of signing the digest of the altered part (so
    the victim's CONFIRM evidence conflicts with the others'). The round streams, so it
    alters each shard as it goes and hashes what it sent the victim, for the last shard."""

    victim: bytes
    delta: int = 1 << 16
    same_digest: bool = False
    altered: list[bytes] = field(default_factory=list)  # groups it equivocated in

    def __post_init__(self) -> None:
        self._hashers: dict[bytes, Any] = {}  # group -> hash of the altered shards so far

    def rewrite(self, node: Insider, sends: list[Send]) -> list[Send]:
        replaced: dict[int, Send] = {}
        for send in sends:
            if send.kind != Reduced.TYPE or send.to != self.victim:
                continue
            envelope = verify_envelope(send.frame)
            body = envelope.body
            assert isinstance(body, Reduced)
            shard = body.shard
            values = shard.array() + shard.array().dtype.type(self.delta)
            data = values.tobytes()
            hasher = self._hashers.setdefault(envelope.group, part_hasher())
            hasher.update(data)
            digest = body.part_digest
            if body.final and not self.same_digest:
                digest = hasher.digest(32)
            altered = replace(shard, digest=shard_digest(data), data=data)
            replaced[id(send)] = _resent(
                node, envelope, Reduced(body.transcript, body.part, digest, altered)
            )
            if envelope.group not in self.altered:
                self.altered.append(envelope.group)
        return [replaced.get(id(send), send) for send in sends]


def vector_error(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Root-mean-square difference between an attacker's estimate and the truth."""
    diff = np.asarray(estimate, np.float64) - np.asarray(truth, np.float64)
    return float(np.sqrt(np.mean(diff * diff)))


__all__ = [
    "Attack",
    "ConfirmSplit",
    "Framer",
    "FramerNode",
    "GarbageParts",
    "Holder",
    "Insider",
    "LearnedSum",
    "ReducerEquivocation",
    "RosterReorder",
    "Spoiler",
    "WeightLever",
    "WeightLeverNode",
    "ZeroContribution",
    "Withhold",
    "learned_sums",
    "lever",
    "resign",
    "vector_error",
]
