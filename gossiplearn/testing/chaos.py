"""A seeded adversarial member that searches for the next attack, and the round's properties
checked after every round it takes part in.

Round v2's defences were written one per attack, and the next attacker found the class next
to each. :class:`ChaosAttack` does not replay known attacks: driven by a seed, it rewrites any
outgoing frame of its :class:`~gossiplearn.testing.insider.Insider`, of any kind, for any
subset of members. Per frame it keeps it, drops it, delays it, duplicates it, mutates any
field of its body (re-signed with its own key, as its own implementation of the wire format
would: to one member and not another, that is equivocation), reorders a ROSTER, relays
statements it saw in earlier rounds where statements are carried (READY's roster, CONFIRM's
evidence, ABORT's proof and evidence), corrupts shard data, forges the group id or
transcript, or adds an ABORT with a "proof" assembled from two statements of one member. As
initiator it sometimes reuses the group id of an earlier round.

:func:`run_chaos` drives rounds of a swarm with one such insider on the deterministic
in-memory network and checks, after each round (:class:`InvariantViolated` on the first
failure, naming the round, seed and property):

- **no honest peer is convicted, refused or struck by an honest peer**: no equivocation
  proof, refusal, certain blame or group-testing strike names an honest peer (a pair kept
  apart always holds the insider);
- **honest members agree on the true average**: every honest member that finished a round
  holds the bit-identical average, every declared weight within the cap, and, when the
  insider did not alter its own data or weight, equal (within the encoding's error) to the
  weighted average of the members' contributions;
- **an insider sees only sums**: nothing it received in a round (each PART and REDUCED part,
  and the difference of any two PARTs, after removing every mask it can derive, with either
  sign) equals or correlates above :data:`CORRELATION_LIMIT` with an honest member's vector
  or the difference of two honest members' vectors;
- **honest-only groups keep completing**: every round whose roster holds honest members only
  finishes for all of them.

Each property has a defence behind it (``Safeguards``); tests switch one off and see the
search find a counterexample.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from gossiplearn.crypto.identity import Identity
from gossiplearn.crypto.masks import prg
from gossiplearn.crypto.narrow import NarrowRing
from gossiplearn.protocol.aggregation import Aggregation, part_bounds, part_digest
from gossiplearn.protocol.backoff import Backoff
from gossiplearn.protocol.envelope import Envelope, encode_envelope, verify_envelope
from gossiplearn.protocol.errors import ProtocolError
from gossiplearn.protocol.events import (
    ABORT_REASONS,
    EquivocationDetected,
    PeerSuspected,
    RoundAborted,
    RoundFinished,
    RoundUsageError,
    Send,
)
from gossiplearn.protocol.evidence import EquivocationProof, claim_of
from gossiplearn.protocol.messages import (
    Abort,
    Accept,
    Confirm,
    Message,
    Part,
    Ready,
    Reduced,
    Roster,
)
from gossiplearn.protocol.node import Node, RoundConfig
from gossiplearn.protocol.safeguards import Safeguards
from gossiplearn.protocol.shards import Shard, shard_digest
from gossiplearn.sim.memnet import MemoryNetwork
from gossiplearn.testing.insider import Attack, Insider

__all__ = [
    "CORRELATION_LIMIT",
    "ChaosAttack",
    "ChaosInsider",
    "ChaosReport",
    "InvariantViolated",
    "PROPERTIES",
    "REPLAY_OPERATIONS",
    "run_chaos",
]

#: Above this correlation with an honest vector (or difference of two), a quantity the
#: insider holds counts as having revealed it. Random vectors of the test's part length
#: (~24 elements) reach it by chance with probability far below 1e-12.
CORRELATION_LIMIT = 0.99
SCHEMA_HASH = b"\x3c" * 32

#: The properties checked after every round (see the module docstring).
PROPERTIES = frozenset(
    {"no_honest_blamed", "same_true_average", "only_sums", "honest_rounds_finish"}
)

#: How often each operation is drawn for one outgoing frame (weights, not probabilities).
OPERATIONS: dict[str, float] = {
    "keep": 12.0,
    "drop": 1.0,
    "delay": 1.0,
    "duplicate": 0.5,
    "mutate": 3.0,
    "reorder_roster": 2.0,
    "relay": 2.0,
    "corrupt_data": 0.7,
    "perturb_data": 1.0,
    "forge_header": 0.7,
    "inject_abort": 0.7,
    "replay_instance": 1.0,
}


#: Reasons it puts in the ABORTs it forges: every registered one, and some that are not.
ABORT_REASON_SAMPLES = [*ABORT_REASONS, "", "x" * 256, "timeout"]


#: A profile of the search that mostly plays along and replays: statements of earlier rounds
#: and instances relayed as evidence and "proofs" in rounds that otherwise go well (the
#: framing class; the full profile spoils most rounds before their CONFIRM).
REPLAY_OPERATIONS: dict[str, float] = {
    "keep": 20.0,
    "relay": 3.0,
    "replay_instance": 3.0,
    "inject_abort": 1.0,
    "drop": 0.5,
    "delay": 0.5,
}

#: Statements of each direction the insider keeps at hand to relay (about 60 rounds' worth).
HISTORY = 2000

#: Kinds the insider sends rarely get their operations drawn with these weights instead.
KIND_OPERATIONS: dict[str, dict[str, float]] = {
    Accept.TYPE: {"keep": 4.0, "mutate": 6.0, "drop": 1.0, "delay": 1.0},
}


class InvariantViolated(AssertionError):
    """A round property failed: the message names the property, the round and the seed."""


# ---- the attack -------------------------------------------------------------------------------


@dataclass
class ChaosAttack(Attack):
    """Seeded rewriting of every outgoing frame (see the module docstring)."""

    seed: int
    operations: dict[str, float] = field(default_factory=lambda: dict(OPERATIONS))
    #: Chance that the insider, as initiator, reuses the group id of an earlier round.
    reuse_group_id: float = 0.3
    #: Chance, per batch of its own frames, that it also sends one nobody asked for.
    unsolicited: float = 0.1
    #: What it did, by operation.
    counts: Counter[str] = field(default_factory=Counter)
    #: Groups in which it altered its own data or weight (the average is then not the true
    #: one of its set contribution, only agreed on).
    tampered: set[bytes] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._held: list[tuple[int, Send]] = []
        self._current = b""
        self._batch = 0
        self._names = list(self.operations)
        self._weights = [self.operations[name] for name in self._names]
        #: (group, recipient) -> {offset: values} of the REDUCED shards it perturbed
        self._altered: dict[tuple[bytes, bytes], dict[int, np.ndarray]] = {}

    # -- what it has seen --

    def statements(self, node: Insider) -> list[Envelope]:
        """The statements it holds: received frames and its own (the latest ones: enough to
        replay from earlier rounds, bounded so that a long search stays linear)."""
        own: list[Envelope] = getattr(node, "sent_envelopes", [])
        return node.received[-HISTORY:] + own[-HISTORY:]

    def group_ids(self, node: Insider) -> list[bytes]:
        """Group ids of the rounds whose statements it still holds, oldest first."""
        return list(dict.fromkeys(e.group for e in self.statements(node) if e.group))

    # -- rewriting --

    def rewrite(self, node: Insider, sends: list[Send]) -> list[Send]:
        self._batch += 1
        out = [send for due, send in self._held if due <= self._batch]
        self._held = [(due, send) for due, send in self._held if due > self._batch]
        for send in sends:
            special = KIND_OPERATIONS.get(send.kind)
            if special is not None:
                operation = self.rng.choices(list(special), list(special.values()))[0]
            else:
                operation = self.rng.choices(self._names, self._weights)[0]
            try:
                out += self._apply(node, operation, send)
            except (ProtocolError, ValueError, TypeError, KeyError, IndexError):
                out.append(send)  # a rewrite the schema refuses to build: send it unchanged
                continue
            self.counts[operation] += 1
        if node.received and self.rng.random() < self.unsolicited:
            extra = self._unsolicited(node)
            if extra is not None:
                self.counts["unsolicited"] += 1
                out.append(extra)
        return out

    def _unsolicited(self, node: Insider) -> Send | None:
        """A frame nobody asked for, to the sender of the last frame it received, about that
        frame's group (possibly a round that member already finished): an ABORT carrying a
        "proof" made of that member's statements from two instances of the group id, or a
        relayed statement."""
        last = node.received[-1]
        if not last.group or last.sender == node.public_key:
            return None
        template = replace(last, sender=node.public_key, recipient=last.sender)
        mine = [
            e for e in self.statements(node) if e.group == last.group and e.sender == last.sender
        ]
        pairs = [
            (a, b)
            for a in mine[-8:]
            for b in mine
            if a.type == b.type
            and a is not b
            and claim_of(a, bind_transcript=False) is not None
            and claim_of(a, bind_transcript=False) != claim_of(b, bind_transcript=False)
            and claim_of(a, bind_transcript=False)[0] == claim_of(b, bind_transcript=False)[0]  # type: ignore[index]
        ]
        transcript = getattr(last.body, "transcript", b"")
        if pairs:
            a, b = self.rng.choice(pairs)
            abort = Abort(
                transcript, "equivocation", EquivocationProof(a.statement, b.statement).encode()
            )
        else:
            abort = self._abort(node, None)
        return self._resend(node, template, abort, Abort.TYPE)

    def _apply(self, node: Insider, operation: str, send: Send) -> list[Send]:
        rng = self.rng
        if operation == "keep":
            return [send]
        if operation == "drop":
            return []
        if operation == "delay":
            self._held.append((self._batch + rng.randint(1, 3), send))
            return []
        if operation == "duplicate":
            return [send, send]
        envelope = verify_envelope(send.frame)
        self._current = envelope.group
        body = envelope.body
        if operation == "inject_abort":
            return [send, self._resend(node, envelope, self._abort(node, envelope), Abort.TYPE)]
        if operation == "replay_instance":
            return self._replay_instance(node, envelope, send)
        if operation == "forge_header":
            groups = self.group_ids(node) or [envelope.group]
            group = rng.choice([*groups, rng.randbytes(16)])
            return [self._resend(node, envelope, body, body.TYPE, group=group)]
        new_body: Message | None = None
        if operation == "mutate":
            new_body = self._mutate(body)
        elif operation == "reorder_roster" and isinstance(body, Roster):
            new_body = _reordered(body, rng)
        elif operation == "relay":
            new_body = self._relay(node, body)
        elif operation == "corrupt_data" and isinstance(body, Part | Reduced):
            data = rng.randbytes(len(body.shard.data))
            shard = replace(body.shard, data=data, digest=shard_digest(data))
            new_body = replace(body, shard=shard)
        elif operation == "perturb_data" and isinstance(body, Part | Reduced):
            # A small change, plausible after decoding: poisoning, or (for one member only)
            # equivocation that no plausibility check can see.
            array = body.shard.array()
            bits = 8 * array.dtype.itemsize
            values = array + array.dtype.type(rng.randint(1, 1 << min(18, bits - 2)))
            data = values.astype(array.dtype).tobytes()
            shard = replace(body.shard, data=data, digest=shard_digest(data))
            new_body = replace(body, shard=shard)
            if isinstance(new_body, Reduced):
                # The round streams: the part digest comes in the last shard only. Remember
                # what this recipient was sent instead, so that the last shard may carry a
                # digest consistent with every shard perturbed for it.
                altered = self._altered.setdefault((envelope.group, envelope.recipient), {})
                altered[body.shard.offset] = values
                if new_body.final and rng.random() < 0.5:
                    digest = _digest_of_part(node, envelope, altered)
                    new_body = replace(new_body, part_digest=digest)
        if new_body is None or new_body == body:
            return [send]
        if isinstance(body, Part | Reduced | Accept):
            self.tampered.add(envelope.group)
        return [self._resend(node, envelope, new_body, new_body.TYPE)]

    def _resend(
        self,
        node: Insider,
        envelope: Envelope,
        body: Message,
        kind: str,
        group: bytes | None = None,
    ) -> Send:
        frame = encode_envelope(
            node.identity,
            node.public_key,
            envelope.recipient,
            body,
            group=envelope.group if group is None else group,
            seq=node.next_seq(),
            ts=envelope.ts,
        )
        return Send(envelope.recipient, frame, kind)

    def _mutate(self, body: Message) -> Message | None:
        """One field of ``body`` changed, the rest kept; None if the result is not a valid
        body (honest peers would refuse it at the schema: nothing to learn)."""
        rng = self.rng
        wire = body.to_wire()
        name = rng.choice(list(wire))
        value = wire[name]
        if name == "shard":
            key = rng.choice(["index", "total", "offset", "length"])
            wire["shard"] = dict(value, **{key: max(0, value[key] + rng.choice((-1, 1, 7)))})
        else:
            wire[name] = _mutated(value, rng)
        try:
            fields = type(body).SCHEMA.validate(wire, "mutated")
            if "shard" in fields:
                fields["shard"] = Shard(**fields["shard"])
            return type(body)(**fields)
        except (ProtocolError, ValueError, TypeError):
            return None

    def _relay(self, node: Insider, body: Message) -> Message | None:
        """Statements from its history where this body carries statements."""
        rng = self.rng
        pool = [
            e.statement for e in self.statements(node) if e.statement and len(e.statement) < 20_000
        ]
        if not pool:
            return None
        if isinstance(body, Ready):
            rosters = [e.statement for e in self.statements(node) if e.type == Roster.TYPE]
            if rosters:
                return replace(body, roster=rng.choice(rosters))
        if isinstance(body, Confirm):
            found = [
                e
                for e in self.statements(node)
                if e.type == Reduced.TYPE and len(e.statement) <= 1024
            ]
            same_group = [e for e in found if e.group == self._current]
            if same_group and rng.random() < 0.7:
                found = same_group
            reduced = [e.statement for e in found]
            if reduced:
                count = min(len(body.evidence) or 1, len(reduced))
                return replace(body, evidence=tuple(rng.sample(reduced, count)))
        if isinstance(body, Abort):
            return self._abort(node, None)
        return None

    def _abort(self, node: Insider, envelope: Envelope | None) -> Abort:
        """An ABORT with a random reason and, often, a "proof" made of two statements of one
        member from its history (a framing attempt) or a relayed statement."""
        rng = self.rng
        transcript = rng.choice([b"", *self._transcripts(node)])
        proof = b""
        evidence = b""
        by_slot: dict[tuple[bytes, bytes, str, int], list[Envelope]] = {}
        for e in self.statements(node):
            claim = claim_of(e, bind_transcript=False)
            if claim is not None and e.sender != node.public_key:
                by_slot.setdefault((e.group, e.sender, e.type, claim[0][2]), []).append(e)
        candidates = [
            envelopes
            for envelopes in by_slot.values()
            if len({claim_of(e, bind_transcript=False)[1] for e in envelopes}) > 1  # type: ignore[index]
        ]
        current = [c for c in candidates if c[0].group == self._current]
        if current and rng.random() < 0.7:
            candidates = current
        if candidates and rng.random() < 0.7:
            envelopes = rng.choice(candidates)
            newest = envelopes[-1]
            older = [
                e
                for e in envelopes[:-1]
                if claim_of(e, bind_transcript=False) != claim_of(newest, bind_transcript=False)
            ]
            if older:
                proof = EquivocationProof(newest.statement, rng.choice(older).statement).encode()
        statements = [e.statement for e in self.statements(node) if len(e.statement) < 20_000]
        if statements and rng.random() < 0.3:
            evidence = rng.choice(statements)
        return Abort(transcript, rng.choice(ABORT_REASON_SAMPLES), proof, evidence)

    def _replay_instance(self, node: Insider, envelope: Envelope, send: Send) -> list[Send]:
        """Statements of this group id from an earlier round instance (the insider reused the
        id, or an honest initiator's came back), put where statements are carried: as the
        CONFIRM's evidence in place of this round's, and as an ABORT's "proof" paired with the
        same member's statement of this round."""
        body = envelope.body
        current = getattr(body, "transcript", b"")
        same_group = [e for e in self.statements(node) if e.group == envelope.group]
        old = [e for e in same_group if getattr(e.body, "transcript", current) != current]
        new = [e for e in same_group if getattr(e.body, "transcript", b"") == current]
        out = [send]
        if isinstance(body, Confirm):
            replaced = [
                e.statement for e in old if isinstance(e.body, Reduced) and len(e.statement) <= 1024
            ]
            if replaced:
                evidence = tuple(replaced[-len(body.evidence or (0,)) :])
                out = [self._resend(node, envelope, replace(body, evidence=evidence), Confirm.TYPE)]
        pairs = [
            (n, o)
            for n in new
            for o in old
            if n.sender == o.sender
            and n.sender != node.public_key
            and n.type == o.type
            and (claim_of(n, bind_transcript=False) or ((), b""))[0]
            == (claim_of(o, bind_transcript=False) or ((), b"x"))[0]
        ]
        if pairs:
            n, o = self.rng.choice(pairs)
            proof = EquivocationProof(n.statement, o.statement).encode()
            abort = Abort(current, "equivocation", proof)
            out.append(self._resend(node, envelope, abort, Abort.TYPE))
        return out

    def _transcripts(self, node: Insider) -> list[bytes]:
        found = set()
        for e in self.statements(node):
            transcript = getattr(e.body, "transcript", b"")
            if transcript:
                found.add(transcript)
        return sorted(found)


def _digest_of_part(node: Insider, envelope: Envelope, altered: dict[int, np.ndarray]) -> bytes:
    """The part digest of the insider's own reduced part with the shards it perturbed for
    this recipient replaced (offset -> values): a digest consistent with the perturbed data,
    so that only the agreement can catch it."""
    body = envelope.body
    assert isinstance(body, Reduced)
    aggregation = getattr(node, "aggregations", {}).get(envelope.group)
    own = getattr(aggregation, "_sum", None)  # the whole reduced part, once its last shard is
    if own is None or any(offset + values.size > own.size for offset, values in altered.items()):
        return body.part_digest
    part = own.copy()
    for offset, values in altered.items():
        part[offset : offset + values.size] = values
    return part_digest(part)


def _mutated(value: Any, rng: random.Random) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return max(
            0,
            rng.choice(
                (value - 1, value + 1, 2 * value + 1, rng.randint(0, 8), 1 << rng.randint(1, 40))
            ),
        )
    if isinstance(value, bytes):
        if value and rng.random() < 0.5:
            flipped = bytearray(value)
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            return bytes(flipped)
        return rng.randbytes(len(value))
    if isinstance(value, str):
        return rng.choice(ABORT_REASON_SAMPLES)
    if isinstance(value, list) and value:
        items = list(value)
        choice = rng.random()
        if choice < 0.4 and len(items) > 1:
            rng.shuffle(items)
        elif choice < 0.7:
            items.pop(rng.randrange(len(items)))
        else:
            items.append(rng.choice(items))
        return items
    return value


def _reordered(roster: Roster, rng: random.Random) -> Roster:
    """The same roster with its members (after the initiator) in another order."""
    order = list(range(1, len(roster.members)))
    rng.shuffle(order)
    order = [0, *order]
    return replace(
        roster,
        members=tuple(roster.members[i] for i in order),
        accepts=tuple(roster.accepts[i] for i in order),
    )


class _Oblivious(Backoff):
    """The insider's own machine backs off from nobody: it would rather keep attacking."""

    def blocked(self, peer: bytes, now_ms: int) -> str | None:
        return None

    def apart(self, members: Iterable[bytes], now_ms: int) -> bool:
        return False


class ChaosInsider(Insider):
    """An insider driven by a :class:`ChaosAttack`; it keeps its own round state per group
    (its pair seeds: what it can unmask), reuses old group ids as initiator, and joins every
    round it can."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backoff = _Oblivious()
        self.aggregations: dict[bytes, Aggregation] = {}
        self.sent_envelopes: list[Envelope] = []

    def _new_group_id(self) -> bytes:
        attack = self.attack
        if isinstance(attack, ChaosAttack):
            groups = attack.group_ids(self)
            if groups and attack.rng.random() < attack.reuse_group_id:
                return attack.rng.choice(groups)
        return super()._new_group_id()

    def _begin_round(self, group: Any, verified: Any, now_ms: int, actions: Any) -> None:
        super()._begin_round(group, verified, now_ms, actions)
        if group.aggregation is not None:
            self.aggregations[group.id] = group.aggregation

    def _through(self, actions: list[Any]) -> list[Any]:
        out = super()._through(actions)
        for action in out:
            if isinstance(action, Send):
                with contextlib.suppress(ProtocolError):
                    envelope = verify_envelope(action.frame)
                    self.sent_envelopes.append(envelope)
                    self._own_accept(envelope, action.frame)
        return out

    def _own_accept(self, envelope: Envelope, frame: bytes) -> None:
        """An ACCEPT it rewrote is the one it stands by: its own machine takes it (and the
        weight it declares) as its own, so that it does not abort its own round."""
        group = self._group
        body = envelope.body
        if (
            isinstance(body, Accept)
            and group is not None
            and group.id == envelope.group
            and group.role == "member"
            and frame != group.my_accept_frame
            and body.ephemeral_key == group.ephemeral.public_key
        ):
            group.my_accept_frame = frame
            group.contribution = replace(group.contribution, weight=body.weight)


# ---- the properties ---------------------------------------------------------------------------


@dataclass
class ChaosReport:
    """What a chaos run did: rounds by kind and outcome, operations used, proofs kept."""

    seed: int
    rounds: int = 0
    with_insider: int = 0
    with_insider_finished: int = 0
    honest_only: int = 0
    honest_only_finished: int = 0
    not_started: int = 0
    insider_refused_by: int = 0
    insider_struck: int = 0
    operations: Counter[str] = field(default_factory=Counter)
    aborts: Counter[str] = field(default_factory=Counter)


@dataclass
class _World:
    net: MemoryNetwork
    nodes: dict[bytes, Node]
    insider: ChaosInsider
    vectors: dict[bytes, np.ndarray]
    weights: dict[bytes, int]
    config: RoundConfig
    seed: int
    data: np.random.Generator

    @property
    def honest(self) -> list[bytes]:
        return [key for key in self.nodes if key != self.insider.public_key]

    def contribute(self, key: bytes, first: bool = False) -> None:
        # Vectors move a little between rounds, as training moves a backbone: a contribution
        # is never sent twice, yet consecutive ones are alike (what differencing would need).
        step = 1.0 if first else 0.05
        self.vectors[key] = (
            self.vectors.get(key, 0) + step * self.data.normal(size=self.length)
        ).astype(np.float32)
        self.nodes[key].set_contribution(self.vectors[key], self.weights[key], SCHEMA_HASH)

    @property
    def length(self) -> int:
        return next(iter(self.vectors.values())).size if self.vectors else 0


def run_chaos(
    seed: int,
    rounds: int,
    *,
    size: int = 5,
    k: int = 4,
    length: int = 96,
    max_weight: int = 3,
    safeguards: Safeguards | None = None,
    attack: ChaosAttack | None = None,
    clear_insider: float = 0.5,
    remembered_groups: int = 4,
    ring_bits: int = 32,
    properties: frozenset[str] = PROPERTIES,
    on_round: Callable[[int, ChaosReport], None] | None = None,
) -> ChaosReport:
    """``rounds`` rounds of a swarm of ``size`` peers, one a :class:`ChaosInsider`, checking
    every property after each; raises :class:`InvariantViolated` on the first failure.
    ``clear_insider``: the chance, per round, that each honest peer forgets its backoff or
    refusal of the insider (as an operator would clear it), so the search goes on.
    ``remembered_groups``: ended group ids an honest peer remembers (small, so the insider can
    reuse ids). ``ring_bits``: the ring of the secure sum (32, or the narrow 16 or 8).
    ``properties``: which of :data:`PROPERTIES` to check."""
    safeguards = safeguards or Safeguards()
    config = RoundConfig(
        max_group_size=k,
        max_weight=max_weight,
        remembered_groups=remembered_groups,
        ring_bits=ring_bits,
        safeguards=safeguards,
    )
    net = MemoryNetwork(seed=seed, latency_ms=3, jitter_ms=5)
    rng = random.Random(seed)
    attack = attack or ChaosAttack(seed)
    nodes: dict[bytes, Node] = {}
    insider: ChaosInsider | None = None
    for i in range(size):
        identity = Identity(bytes([i + 1]) * 31 + bytes([seed % 251]))
        if i == 0:
            insider = ChaosInsider(
                identity,
                config,
                rng=random.Random(seed * 7919 + i),
                attack=attack,
                now_ms=int(net.now_ms),
            )
            node: Node = insider
        else:
            node = Node(
                identity, config, rng=random.Random(seed * 7919 + i), now_ms=int(net.now_ms)
            )
        nodes[node.public_key] = net.add(node)
    assert insider is not None
    data = np.random.default_rng(seed)
    world = _World(net, nodes, insider, {}, {}, config, seed, data)
    for key in nodes:
        world.weights[key] = int(data.integers(1, max_weight + 1))
        world.vectors[key] = np.zeros(length, np.float32)
        world.contribute(key, first=True)
    report = ChaosReport(seed)
    honest_set = set(world.honest)
    for number in range(rounds):
        report.rounds += 1
        before = {key: len(net.outcomes[key]) for key in nodes}
        proofs_before = {key: len(net.proofs[key]) for key in nodes}
        suspected_before = {key: len(net.suspected[key]) for key in nodes}
        vectors = {key: vector.copy() for key, vector in world.vectors.items()}
        initiator = insider.public_key if rng.random() < 0.5 else rng.choice(world.honest)
        try:
            net.start_round(initiator)
        except RoundUsageError:
            report.not_started += 1
        net.run()
        where = f"seed {seed}, round {number}"
        _check_round(
            world,
            report,
            before,
            proofs_before,
            suspected_before,
            vectors,
            honest_set,
            properties,
            where,
        )
        for key in nodes:
            if not nodes[key].contribution_fresh:
                world.contribute(key)
        for key in world.honest:
            if rng.random() < clear_insider:
                nodes[key].clear_refusal(insider.public_key)
        if on_round is not None:
            on_round(number, report)
    report.operations = attack.counts
    return report


def _check_round(
    world: _World,
    report: ChaosReport,
    before: dict[bytes, int],
    proofs_before: dict[bytes, int],
    suspected_before: dict[bytes, int],
    vectors: dict[bytes, np.ndarray],
    honest: set[bytes],
    properties: frozenset[str],
    where: str,
) -> None:
    net = world.net
    insider = world.insider.public_key
    now = int(net.now_ms)
    for key in honest:
        node = world.nodes[key]
        new_proofs = net.proofs[key][proofs_before[key] :]
        new_suspected = net.suspected[key][suspected_before[key] :]
        new_outcomes = net.outcomes[key][before[key] :]
        report.insider_struck += sum(s.peers == (insider,) for s in new_suspected)
        report.insider_refused_by += node.backoff.blocked(insider, now) == "refused"
        for outcome in new_outcomes:
            if isinstance(outcome, RoundAborted):
                report.aborts[outcome.reason] += 1
        if "no_honest_blamed" in properties:
            _check_no_honest_blamed(
                node, new_proofs, new_suspected, new_outcomes, honest, insider, now, where
            )
    groups: dict[bytes, dict[bytes, Any]] = {}
    for key in honest:
        for outcome in net.outcomes[key][before[key] :]:
            groups.setdefault(outcome.group, {})[key] = outcome
    for group, outcomes in groups.items():
        finished = {k: o for k, o in outcomes.items() if isinstance(o, RoundFinished)}
        if finished and "same_true_average" in properties:
            _check_average(world, group, finished, vectors, where)
        roster = _roster_of(outcomes)
        if roster is None:
            continue
        if insider in roster:
            report.with_insider += 1
            report.with_insider_finished += bool(finished)
            if "only_sums" in properties:
                _check_privacy(world, group, vectors, honest, where)
            continue
        report.honest_only += 1
        report.honest_only_finished += bool(finished)
        if "honest_rounds_finish" in properties and set(finished) != set(roster):
            reasons = sorted({getattr(o, "reason", "?") for o in outcomes.values()})
            raise InvariantViolated(f"{where}: an honest-only round did not finish ({reasons})")


def _check_no_honest_blamed(
    node: Node,
    proofs: list[EquivocationDetected],
    suspected: list[PeerSuspected],
    outcomes: list[Any],
    honest: set[bytes],
    insider: bytes,
    now: int,
    where: str,
) -> None:
    for proof in proofs:
        if proof.peer in honest:
            raise InvariantViolated(f"{where}: an honest peer holds a proof against an honest peer")
    for other, state in node.backoff.snapshot(now).items():
        if other in honest:
            verb = "refuses" if state["refused"] else "backs off"
            raise InvariantViolated(f"{where}: an honest peer {verb} an honest peer ({state})")
    for outcome in outcomes:
        if isinstance(outcome, RoundAborted) and honest & set(outcome.blamed):
            raise InvariantViolated(
                f"{where}: an honest peer blamed an honest peer ({outcome.reason})"
            )
    for singled in suspected:
        if len(singled.peers) == 1 and singled.peers[0] in honest:
            raise InvariantViolated(f"{where}: group testing struck an honest peer")
        if len(singled.peers) == 2 and insider not in singled.peers:
            raise InvariantViolated(f"{where}: group testing kept two honest peers apart")


def _roster_of(outcomes: dict[bytes, Any]) -> tuple[bytes, ...] | None:
    """The members of a round as its honest members that verified a roster hold them (an
    honest initiator sends one roster; an insider's always names it first)."""
    for outcome in outcomes.values():
        if outcome.stats.members:
            return tuple(outcome.stats.members)
    return None


def _check_average(
    world: _World,
    group: bytes,
    finished: dict[bytes, RoundFinished],
    vectors: dict[bytes, np.ndarray],
    where: str,
) -> None:
    first = next(iter(finished.values()))
    for outcome in finished.values():
        if outcome.members != first.members or outcome.total_weight != first.total_weight:
            raise InvariantViolated(f"{where}: honest members finished different rounds")
        if not np.array_equal(outcome.average, first.average):
            raise InvariantViolated(f"{where}: honest members applied different averages")
    members = first.members
    cap = world.config.max_weight
    if first.total_weight > len(members) * cap:
        raise InvariantViolated(
            f"{where}: an average with total weight {first.total_weight} > {len(members)} x cap"
        )
    insider = world.insider.public_key
    if insider in members and group in world.insider.attack.tampered:  # type: ignore[attr-defined]
        return
    weights = [world.weights[m] for m in members]
    if sum(weights) != first.total_weight:
        return  # the insider declared another weight (within the cap): agreed, not checkable
    weighted = [w * vectors[m].astype(np.float64) for m, w in zip(members, weights, strict=True)]
    expected = np.sum(weighted, axis=0) / sum(weights)
    config = world.config
    if config.ring_bits == 32:
        tolerance = len(members) * 2.0 ** -(config.frac_bits + 1) + 1e-6
    else:
        ring = NarrowRing(config.ring_bits, len(members), int(math.log2(config.clip)))
        tolerance = len(members) * ring.unit * (1 + 1e-6) + 1e-6
    error = float(np.max(np.abs(first.average - expected)))
    if error > tolerance:
        raise InvariantViolated(f"{where}: the agreed average is off the true one by {error:.3g}")


def _check_privacy(
    world: _World,
    group: bytes,
    vectors: dict[bytes, np.ndarray],
    honest: set[bytes],
    where: str,
) -> None:
    """Search what the insider can compute from this round for an honest vector (or the
    difference of two): every combination with coefficients in {-1, 0, 1} of the PARTs it
    received for one part and of the masks it shares with their senders (so every sign
    either side used), and each REDUCED part less its own PART of that part."""
    insider = world.insider
    aggregation = insider.aggregations.get(group)
    if aggregation is None:
        return
    decoding = _Decoding.of(world.config, len(aggregation.members))
    length = aggregation.group.params.length
    m = len(aggregation.members)
    bounds = part_bounds(length, m)
    masks: dict[bytes, np.ndarray] = {}
    for j, member in enumerate(aggregation.members):
        seed = aggregation._mask_seeds.get(aggregation._rank[j])  # noqa: SLF001
        if seed is not None:
            masks[member] = prg(seed, length)
    received = _pieces(insider.received, group, insider.public_key, m, bounds)
    own = _pieces(insider.sent_envelopes, group, None, m, bounds)
    weights = dict(zip(aggregation.members, aggregation.group.weights, strict=True))
    members = [h for h in aggregation.members if h in honest]
    targets: list[tuple[str, np.ndarray]] = [(f"x of {h.hex()[:6]}", vectors[h]) for h in members]
    for a in range(len(members)):
        for b in range(a + 1, len(members)):
            ha, hb = members[a], members[b]
            # Weights are visible in the roster: the difference of two members' weighted
            # vectors is as much a leak as that of their plain vectors.
            diff = weights[ha] * vectors[ha].astype(np.float64) - weights[hb] * vectors[hb]
            targets.append(("a difference of two honest vectors", diff))
    by_part: dict[int, list[tuple[bytes, np.ndarray]]] = {}
    for (sender, kind, part), data in received.items():
        if kind == Part.TYPE:
            by_part.setdefault(part, []).append((sender, data))
    for part, senders in by_part.items():
        start, end = bounds[part]
        rows = [data for _, data in senders]
        rows += [masks[s][start:end] for s, _ in senders if s in masks]
        combos = _sign_combinations(len(rows), first=len(senders))
        values = (combos @ np.stack(rows).astype(np.int64)) % decoding.modulus
        _compare(
            values, targets, start, end, decoding, f"combination of PARTs for part {part}", where
        )
    for (_sender, kind, part), data in received.items():
        mine = own.get((insider.public_key, Part.TYPE, part))
        if kind == Reduced.TYPE and mine is not None:
            start, end = bounds[part]
            values = ((data.astype(np.int64) - mine) % decoding.modulus)[None, :]
            _compare(values, targets, start, end, decoding, f"REDUCED part {part}", where)


@dataclass(frozen=True)
class _Decoding:
    """How the ring's elements read as values (only their correlation matters here)."""

    bits: int
    unit: float

    @classmethod
    def of(cls, config: RoundConfig, members: int) -> _Decoding:
        if config.ring_bits == 32:
            return cls(32, 2.0**-config.frac_bits)
        ring = NarrowRing(config.ring_bits, members, int(math.log2(config.clip)))
        return cls(config.ring_bits, ring.unit)

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    def decode(self, values: np.ndarray) -> np.ndarray:
        signed = {32: np.int32, 16: np.int16, 8: np.int8}[self.bits]
        unsigned = {32: np.uint32, 16: np.uint16, 8: np.uint8}[self.bits]
        return values.astype(unsigned).view(signed).astype(np.float64) * self.unit


def _pieces(
    envelopes: list[Envelope],
    group: bytes,
    recipient: bytes | None,
    m: int,
    bounds: list[tuple[int, int]],
) -> dict[tuple[bytes, str, int], np.ndarray]:
    """Complete PART and REDUCED pieces of ``group`` in ``envelopes``, joined by shard index:
    (sender, type, part) -> ring elements (the first copy of each shard)."""
    shards: dict[tuple[bytes, str, int], dict[int, Shard]] = {}
    for envelope in envelopes:
        body = envelope.body
        if envelope.group != group or not isinstance(body, Part | Reduced):
            continue
        if recipient is not None and envelope.recipient != recipient:
            continue
        if body.part < m:
            shards.setdefault((envelope.sender, body.TYPE, body.part), {}).setdefault(
                body.shard.index, body.shard
            )
    pieces = {}
    for key, found in shards.items():
        if len(found) != next(iter(found.values())).total:
            continue
        data = np.concatenate([found[i].array() for i in sorted(found)])
        start, end = bounds[key[2]]
        if data.size == end - start:
            pieces[key] = data
    return pieces


def _sign_combinations(rows: int, first: int) -> np.ndarray:
    """Every vector of coefficients in {-1, 0, 1} over ``rows`` rows with a non-zero one
    among the ``first`` rows (the data), up to an overall sign."""
    grids = np.array(np.meshgrid(*[[-1, 0, 1]] * rows, indexing="ij")).reshape(rows, -1).T
    keep = np.any(grids[:, :first] != 0, axis=1)
    grids = grids[keep]
    leading = grids[np.arange(len(grids)), np.argmax(grids != 0, axis=1)]
    return grids[leading > 0].astype(np.int64)


def _compare(
    values: np.ndarray,
    targets: list[tuple[str, np.ndarray]],
    start: int,
    end: int,
    decoding: _Decoding,
    label: str,
    where: str,
) -> None:
    if end - start < 8:
        return
    decoded = decoding.decode(values)
    decoded -= decoded.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(decoded, axis=1)
    for target_label, target in targets:
        expected = target[start:end].astype(np.float64)
        expected = expected - expected.mean()
        denominator = norms * np.linalg.norm(expected)
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.abs(decoded @ expected) / denominator
        corr = np.nan_to_num(corr)
        best = float(corr.max()) if corr.size else 0.0
        if best > CORRELATION_LIMIT:
            raise InvariantViolated(
                f"{where}: the insider's {label} reveals {target_label} (correlation {best:.6f})"
            )


__all__ += ["SCHEMA_HASH"]
