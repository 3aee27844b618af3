"""The secure sum of a verified group, one member's side, in explicit steps.

Once the roster is known (its transcript T names this round instance), member i of m:

1. **Agree** (:meth:`Aggregation.start`): every member but the initiator sends every other
   member READY(T, the ROSTER statement it received). A READY with another transcript and a
   valid relayed ROSTER is a proof that the initiator signed two rosters; one without is its
   sender's fault. Nothing masked moves until every READY agreed: in round v2 an initiator
   that sent two members the roster in different orders made their masks add instead of
   cancel, and read the difference of their vectors.
2. **Share**: sends member p part p of its masked vector (PART shards): it encodes
   (w_i / W) * x_i in Z/2^32, W the sum of the weights every member declared in its signed
   ACCEPT (all in the roster, so W is agreed with the transcript), and adds its pairwise masks.
   Pair seeds are derived from the transcript and mask signs from the order of the members'
   identity keys, so a mask cancels only between two members that hold the same transcript.
   This is the moment the contribution is spent (:attr:`Aggregation.shared`).
3. **Reduce**: once it holds every member's piece of its part p, it sums them (the masks
   cancel) and sends the reduced part to every member (REDUCED shards, each carrying the
   digest of the whole reduced part).
4. **Confirm**: once it holds every reduced part, it computes the average, checks it is
   plausible, and sends every member a CONFIRM: a digest of the transcript and every part
   digest, and the REDUCED statements it received. Nothing is applied yet.
5. **Done**: every other member's CONFIRM arrived and its digest equals this member's. A
   relayed statement that conflicts with one this member holds is an equivocation proof; a
   digest that differs without such a proof is its sender's fault (an honest member's digest
   can only differ from another honest member's if some reducer equivocated, and then its
   evidence proves it).

Every PART, REDUCED and CONFIRM carries T; one of another instance is its signer's fault (all
members agreed on T first). Any failure raises :class:`~gossiplearn.protocol.events.RoundFault`
naming the reason and the members held responsible; :meth:`Aggregation.missing` says whom a
timeout leaves waiting for.

Masking is passed in (``masking``): the pairwise masks, or none for the plaintext baseline
that measures what the masks cost.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import msgpack
import numpy as np
from blake3 import blake3

from gossiplearn.crypto.agreement import KeyAgreementError, derive_pair_seed, shared_secret
from gossiplearn.crypto.masks import apply_pairwise_masks
from gossiplearn.crypto.narrow import NarrowRing
from gossiplearn.crypto.ring import RING32, decode, encode
from gossiplearn.protocol.envelope import Envelope, Limits, verify_statement
from gossiplearn.protocol.errors import ProtocolError
from gossiplearn.protocol.events import RoundFault
from gossiplearn.protocol.evidence import EquivocationProof, Slot, claim_of
from gossiplearn.protocol.matchmaking import VerifiedGroup, transcript_of
from gossiplearn.protocol.messages import (
    CLIP_EXPONENT_OFFSET,
    Confirm,
    Message,
    Part,
    Ready,
    Reduced,
    Roster,
)
from gossiplearn.protocol.safeguards import Safeguards
from gossiplearn.protocol.shards import Shard, ordered_shards, split_shards

#: Adds a member's pairwise masks to ``vector`` in place: (vector, my index, seeds by index).
Masking = Callable[[np.ndarray, int, Mapping[int, bytes]], object]
PAIRWISE_MASKS: Masking = apply_pairwise_masks

_MASK_LABEL = b"mask"
_CHANNEL_LABEL = b"bulk"
_DIGEST_PERSON = b"gossiplearn.cfm3"
_PART_CONTEXT = "gossiplearn round v3 reduced part digest"


def no_masks(vector: np.ndarray, index: int, seeds: Mapping[int, bytes]) -> np.ndarray:
    """The plaintext baseline's "masking": none (benchmarks only; see plaintext.py)."""
    return vector


def part_bounds(length: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges splitting ``length`` elements into ``parts`` pieces."""
    cuts = [p * length // parts for p in range(parts + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


#: The wire dtype of each ring's elements.
RING_DTYPES = {32: "u4", 16: "u2", 8: "u1"}


def part_digest(reduced: np.ndarray) -> bytes:
    """The digest a reducer signs in every REDUCED shard of its part (ring elements of any
    width, little-endian)."""
    data = np.ascontiguousarray(reduced, dtype=reduced.dtype.newbyteorder("<"))
    return blake3(data.view(np.uint8).data, derive_key_context=_PART_CONTEXT).digest(32)


@dataclass(frozen=True)
class Contribution:
    """What a member brings to a round: its backbone vector and weight."""

    vector: np.ndarray  # float32, 1-D; a private copy
    weight: int  # in [1, max_weight]
    schema_hash: bytes  # 32 bytes naming the backbone's layout; members must agree
    digest: bytes  # of the vector: a contribution is sent in at most one round


@dataclass(frozen=True)
class Result:
    average: np.ndarray
    total_weight: int
    clipped: int


class Step(enum.Enum):
    AGREE = "agree"  # own READY sent; waiting for every other member's
    COLLECT = "collect"  # own parts sent; collecting parts and reduced parts
    CONFIRM = "confirm"  # own CONFIRM sent; checking the others'
    DONE = "done"


Outgoing = tuple[int, Message]  # (member index, body)


@dataclass
class _ShardSet:
    """Shards of one vector piece from one sender, bounded by the piece's expected size."""

    expected_length: int
    dtype: str = "u4"
    shards: dict[int, Shard] = field(default_factory=dict)
    total: int | None = None
    received_elements: int = 0

    def add(self, shard: Shard, what: str, blamed: tuple[bytes, ...]) -> None:
        if shard.dtype != self.dtype:
            raise RoundFault(f"bad_{what}_dtype", blamed)
        if self.total is not None and shard.total != self.total:
            raise RoundFault(f"inconsistent_{what}_shards", blamed)
        if shard.index in self.shards:
            raise RoundFault(f"duplicate_{what}_shard", blamed)
        self.received_elements += shard.length
        if self.received_elements > self.expected_length:
            raise RoundFault(f"oversized_{what}", blamed)
        self.total = shard.total
        self.shards[shard.index] = shard

    @property
    def complete(self) -> bool:
        return self.total is not None and len(self.shards) == self.total

    def ordered(self, what: str, blamed: tuple[bytes, ...]) -> list[Shard]:
        """The complete set in order (checked: no gap, overlap or excess), data not copied."""
        try:
            # Every shard here came in a verified envelope: its data matched its digest.
            return ordered_shards(
                self.shards.values(),
                dtype=self.dtype,
                length=self.expected_length,
                digests_checked=True,
            )
        except ProtocolError:
            raise RoundFault(f"bad_{what}", blamed) from None


class Aggregation:
    """Member ``index`` of ``group``: its secure sum from the roster agreement to the agreed
    average."""

    def __init__(
        self,
        group: VerifiedGroup,
        index: int,
        ephemeral_private_key: bytes,
        contribution: Contribution,
        *,
        masking: Masking = PAIRWISE_MASKS,
        shard_bytes: int,
        max_abs_average: float,
        limits: Limits,
        safeguards: Safeguards | None = None,
    ) -> None:
        self.group = group
        self.members = group.members
        self.index = index
        self.transcript = group.transcript
        self.contribution = contribution
        self.step = Step.AGREE
        self.result: Result | None = None
        #: Set once this member's masked parts went out: its contribution is spent.
        self.shared = False
        self._masking = masking
        self._shard_bytes = shard_bytes
        self._max_abs_average = max_abs_average
        params = group.params
        self._narrow: NarrowRing | None = None
        if params.ring_bits != 32:
            self._narrow = NarrowRing(
                params.ring_bits, len(group.members), params.clip_exponent - CLIP_EXPONENT_OFFSET
            )
            # Garbage spreads over +-clip in a narrow ring (no wider range to fall into): an
            # average beyond 0.9 clip is taken for it (a garbage part of n elements passes
            # with probability 0.9^n), so the clip must sit above the model's weights.
            self._max_abs_average = min(max_abs_average, 0.9 * self._narrow.clip)
        self._dtype = RING_DTYPES[params.ring_bits]
        # Stochastic rounding's coins: this member's own, from its secret of this round only.
        self._rounding = np.random.default_rng(
            int.from_bytes(
                hashlib.blake2b(
                    ephemeral_private_key, digest_size=16, person=b"gossiplearn.rnd3"
                ).digest(),
                "big",
            )
        )
        self._limits = limits
        self._safeguards = safeguards or Safeguards()
        bind = self._safeguards.transcript_binding
        m = len(self.members)
        self._total_weight = sum(group.weights)
        self._bounds = part_bounds(group.params.length, m)
        # Mask signs follow the order of the identity keys (the same for every member whatever
        # roster it holds) and seeds the transcript; round v2 used each member's own roster
        # index and the group id (Safeguards.transcript_binding off).
        if bind:
            order = sorted(range(m), key=lambda j: self.members[j])
            self._rank = {j: r for r, j in enumerate(order)}
        else:
            self._rank = {j: j for j in range(m)}
        binding = self.transcript if bind else group.id
        self._mask_seeds: dict[int, bytes] = {}
        #: A transport key per other member (by its identity key): the driver may seal this
        #: round's frames to that member with it (peer/bulk.py). From the same agreement as the
        #: masks, under its own label, so it reveals nothing about them.
        self.channel_keys: dict[bytes, bytes] = {}
        me = self.members[index]
        for j, (member, key) in enumerate(zip(self.members, group.ephemeral_keys, strict=True)):
            if j == index:
                continue
            try:
                secret = shared_secret(ephemeral_private_key, key)
            except KeyAgreementError:
                raise RoundFault("bad_ephemeral_key", (member,)) from None
            self._mask_seeds[self._rank[j]] = derive_pair_seed(
                secret, binding, me, member, _MASK_LABEL
            )
            self.channel_keys[member] = derive_pair_seed(
                secret, binding, me, member, _CHANNEL_LABEL
            )
        start, end = self._bounds[index]
        self._parts = {j: _ShardSet(end - start, self._dtype) for j in range(m) if j != index}
        self._reduced = {
            j: _ShardSet(stop - begin, self._dtype)
            for j, (begin, stop) in enumerate(self._bounds)
            if j != index
        }
        self._ready: set[int] = set()
        self._masked: np.ndarray | None = None
        self._own_part: np.ndarray | None = None
        self._own_reduced: np.ndarray | None = None
        self._own_digest: bytes | None = None
        # reducer index -> (part digest, REDUCED statement) of what this member received
        self._seen: dict[int, tuple[bytes, bytes]] = {}
        self._confirms: dict[int, tuple[Confirm, bytes]] = {}  # (body, statement)
        self._digest: bytes | None = None
        self.clipped = 0

    # ---- step 1: agree ----

    def start(self) -> list[Outgoing]:
        """This member's READYs (none from the initiator, whose ROSTER says it all)."""
        out: list[Outgoing] = []
        if not self._safeguards.roster_agreement:
            self._ready = set(self._ready_expected())
        elif self.index != 0:
            ready = Ready(self.transcript, self.group.roster_statement)
            out += [(j, ready) for j in self._others()]
        return out + self._progress()

    def _ready_expected(self) -> list[int]:
        return [j for j in self._others() if j != 0]

    def _on_ready(self, sender: int, envelope: Envelope) -> None:
        body = envelope.body
        assert isinstance(body, Ready)
        blamed = (self.members[sender],)
        if sender == 0 or sender in self._ready:
            raise RoundFault("unexpected_ready", blamed)
        if body.transcript != self.transcript:
            raise self._roster_conflict(sender, body)
        self._ready.add(sender)

    def _roster_conflict(self, sender: int, ready: Ready) -> RoundFault:
        """A READY with another transcript: a proof against the initiator if it relays a
        ROSTER the initiator signed for this group that hashes to that transcript, else the
        READY's signer is at fault."""
        blamed = (self.members[sender],)
        try:
            relayed = verify_statement(ready.roster, limits=self._limits)
        except ProtocolError:
            return RoundFault("bad_ready", blamed)
        roster = relayed.body
        initiator = self.members[0]
        if (
            not isinstance(roster, Roster)
            or relayed.sender != initiator
            or relayed.group != self.group.id
            or transcript_of(self.group.id, roster) != ready.transcript
            or not self.group.roster_statement  # the initiator itself signed only one roster
        ):
            return RoundFault("bad_ready", blamed)
        proof = EquivocationProof(self.group.roster_statement, ready.roster).encode()
        return RoundFault("equivocation", (initiator,), proof)

    # ---- step 2: share ----

    @property
    def pending_work(self) -> bool:
        """Whether :meth:`prepare` has work to do: encoding and masking this member's vector
        while it waits for the READYs (nothing it needs depends on them; nothing goes out)."""
        return self.step is Step.AGREE and self._masked is None

    def prepare(self) -> None:
        """Encode and mask this member's vector ahead of the READYs (the driver calls it once
        the READYs are sent: the masks are generated while the others' READYs travel)."""
        if self._masked is not None:
            return
        share = self.group.weights[self.index] / self._total_weight
        if self._narrow is not None:
            encoded, self.clipped = self._narrow.encode(
                self.contribution.vector, share, self._rounding
            )
        else:
            encoded, self.clipped = encode(
                self.contribution.vector, self.group.params.frac_bits, scale=share
            )
        self._masking(encoded, self._rank[self.index], self._mask_seeds)
        self._masked = encoded

    def _share(self) -> list[Outgoing]:
        """This member's PARTs: the moment its contribution is spent."""
        out: list[Outgoing] = []
        self.prepare()
        encoded = self._masked
        assert encoded is not None
        self.shared = True
        for j, (start, end) in enumerate(self._bounds):
            if j == self.index:
                self._own_part = encoded[start:end]
                continue
            out += [
                (j, Part(self.transcript, j, shard))
                for shard in split_shards(encoded[start:end], self._shard_bytes)
            ]
        return out

    # ---- inputs ----

    def receive(self, sender: int, envelope: Envelope) -> list[Outgoing]:
        """A verified message of this group from member ``sender``."""
        blamed = (self.members[sender],)
        body = envelope.body
        if isinstance(body, Ready):
            self._on_ready(sender, envelope)
            return self._progress()
        if not isinstance(body, Part | Reduced | Confirm):
            raise RoundFault("unexpected_" + envelope.type.lower(), blamed)
        if self._safeguards.transcript_binding and body.transcript != self.transcript:
            raise RoundFault("wrong_transcript", blamed)
        if isinstance(body, Part):
            if body.part != self.index:
                raise RoundFault("misaddressed_part", blamed)
            self._parts[sender].add(body.shard, "part", blamed)
        elif isinstance(body, Reduced):
            if body.part != sender:
                raise RoundFault("misattributed_reduced", blamed)
            known = self._seen.get(sender)
            if known is None:
                self._seen[sender] = (body.part_digest, envelope.statement)
            elif known[0] != body.part_digest:
                proof = EquivocationProof(known[1], envelope.statement).encode()
                raise RoundFault("equivocation", blamed, proof)
            self._reduced[sender].add(body.shard, "reduced", blamed)
        else:
            if sender in self._confirms:
                raise RoundFault("unexpected_confirm", blamed)
            self._confirms[sender] = (body, envelope.statement)
        return self._progress()

    def missing(self) -> tuple[bytes, ...]:
        """The members whose messages of the earliest unfinished step this member still waits
        for (informational: such a member may itself be waiting for someone else)."""
        if self.step is Step.AGREE:
            return tuple(self.members[j] for j in self._ready_expected() if j not in self._ready)
        first = [j for j in self._others() if not self._parts[j].complete]
        if first:
            return tuple(self.members[j] for j in first)
        reducers = [j for j, shard_set in self._reduced.items() if not shard_set.complete]
        if reducers:
            return tuple(self.members[j] for j in reducers)
        return tuple(self.members[j] for j in self._others() if j not in self._confirms)

    def shed(self) -> None:
        """The round has ended and is only remembered now (for a late ABORT, checked against
        the members, the transcript and the statements): drop the vectors (this member's
        contribution, masked and reduced parts, the shards received, the average). A peer
        remembers its last rounds; with their vectors, each cost a model's worth or more
        (memory mode, 300 peers: +63 KB a peer a round, 500 KB a peer after 10 rounds)."""
        empty = np.empty(0, np.float32)
        self.contribution = dataclasses.replace(self.contribution, vector=empty)
        self._parts = {}
        self._reduced = {}
        self._masked = self._own_part = self._own_reduced = None
        if self.result is not None:
            self.result = dataclasses.replace(self.result, average=empty)

    def statement_of(self, member: bytes, slot: Slot) -> bytes | None:
        """The statement this member holds from ``member`` for ``slot`` (to compare with one
        relayed in an ABORT), if any."""
        if member not in self.members:
            return None
        j = self.members.index(member)
        kind, transcript, part = slot
        if transcript != self.transcript:
            return None
        if kind == "REDUCED" and part == j and j in self._seen:
            return self._seen[j][1]
        if kind == "CONFIRM" and j in self._confirms:
            return self._confirms[j][1]
        return None

    # ---- the steps ----

    def _progress(self) -> list[Outgoing]:
        out: list[Outgoing] = []
        if self.step is Step.AGREE and len(self._ready) == len(self._ready_expected()):
            self.step = Step.COLLECT
            out += self._share()
        if self.step is Step.AGREE:
            return out
        if self._own_reduced is None and all(s.complete for s in self._parts.values()):
            out += self._reduce()
        if self.step is Step.COLLECT and self._view_complete():
            out += self._confirm()
            if not self._safeguards.confirm:
                self.step = Step.DONE
        if self.step is Step.CONFIRM and len(self._confirms) == len(self.members) - 1:
            self._check_confirms()
            self.step = Step.DONE
        return out

    def _reduce(self) -> list[Outgoing]:
        assert self._own_part is not None
        reduced = self._own_part.copy()
        for j, shard_set in self._parts.items():
            for shard in shard_set.ordered("part", (self.members[j],)):
                piece = reduced[shard.offset : shard.offset + shard.length]
                np.add(piece, shard.array(), out=piece)
        self._own_reduced = reduced
        digest = part_digest(reduced)
        self._own_digest = digest
        shards = split_shards(reduced, self._shard_bytes)
        return [
            (j, Reduced(self.transcript, self.index, digest, shard))
            for j in self._others()
            for shard in shards
        ]

    def _view_complete(self) -> bool:
        return self._own_reduced is not None and all(s.complete for s in self._reduced.values())

    def _confirm(self) -> list[Outgoing]:
        assert self._own_reduced is not None and self._own_digest is not None
        params = self.group.params
        # decode(sum) straight into the float32 average, part by part (no full-size
        # temporaries: a 10M-element round used to make four).
        average = np.empty(params.length, dtype=np.float32)
        digests = []
        for j, (start, _end) in enumerate(self._bounds):
            if j == self.index:
                pieces = [(0, self._own_reduced)]
                digests.append(self._own_digest)
            else:
                # Shard by shard, never joined: the part's digest is the hash of their data
                # in order (the same bytes part_digest hashes), and each decodes in place.
                blamed = (self.members[j],)
                shards = self._reduced[j].ordered("reduced", blamed)
                hasher = blake3(derive_key_context=_PART_CONTEXT)
                for shard in shards:
                    hasher.update(shard.data)
                claimed = self._seen[j][0]
                if hasher.digest(32) != claimed:
                    raise RoundFault("bad_reduced_digest", blamed)
                digests.append(claimed)
                pieces = [(shard.offset, shard.array()) for shard in shards]
            for offset, piece in pieces:
                at = start + offset
                target = average[at : at + piece.size]
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # see below
                    if self._narrow is not None:
                        self._narrow.decode(piece, out=target)
                    else:
                        decode(piece, params.frac_bits, RING32, np.float32, out=target)
        # Garbage from a member decodes to values spread over the ring's range; every honest
        # member holds this same average, so all reach the same verdict (NaN fails it too:
        # min and max are NaN if any element is).
        bound = self._max_abs_average
        if average.size and not (-bound <= average.min() and average.max() <= bound):
            raise RoundFault("implausible_average")
        self.result = Result(average, self._total_weight, self.clipped)
        self._digest = self._round_digest(digests)
        if not self._safeguards.confirm:
            return []
        evidence = tuple(statement for _, (_, statement) in sorted(self._seen.items()))
        self.step = Step.CONFIRM
        confirm = Confirm(self.transcript, self._digest, evidence)
        return [(j, confirm) for j in self._others()]

    def _round_digest(self, part_digests: list[bytes]) -> bytes:
        content = msgpack.packb([self.transcript, part_digests], use_bin_type=True)
        return hashlib.blake2b(content, digest_size=32, person=_DIGEST_PERSON).digest()

    def _check_confirms(self) -> None:
        """Every CONFIRM is in: search the evidence of every member that disagrees for a proof
        first (it may disagree because a reducer equivocated to it: then it is not to blame),
        then blame the disagreement. A member whose digest equals this member's holds the same
        part digests (the digest covers them all), so its evidence can show no conflict an
        honest member would have seen: in a round that goes well, no statement is verified."""
        disagreeing = [
            j for j in sorted(self._confirms) if self._confirms[j][0].digest != self._digest
        ]
        for j in disagreeing:
            confirm, _ = self._confirms[j]
            self._search_evidence(j, confirm)
        if disagreeing:
            raise RoundFault(
                "disagreement",
                tuple(self.members[j] for j in disagreeing),
                evidence=self._confirms[disagreeing[0]][1],
            )

    def _search_evidence(self, j: int, confirm: Confirm) -> None:
        """A REDUCED statement in member j's evidence that conflicts with the one this member
        holds from the same reducer is a proof against that reducer. Anything else in the
        evidence (unverifiable, of another round, about itself) proves nothing and is passed
        over: if it hides a disagreement, the digests show it."""
        for statement in confirm.evidence:
            try:
                envelope = verify_statement(statement, limits=self._limits)
            except ProtocolError:
                continue
            claim = claim_of(envelope, bind_transcript=self._safeguards.transcript_binding)
            body = envelope.body
            if (
                claim is None
                or not isinstance(body, Reduced)
                or envelope.group != self.group.id
                or envelope.sender not in self.members
            ):
                continue
            reducer = self.members.index(envelope.sender)
            mine = self._seen.get(reducer)
            if mine is None or body.part != reducer:
                continue
            if self._safeguards.transcript_binding and body.transcript != self.transcript:
                continue
            if mine[0] != body.part_digest:
                proof = EquivocationProof(mine[1], statement).encode()
                raise RoundFault("equivocation", (envelope.sender,), proof)

    def _others(self) -> list[int]:
        return [j for j in range(len(self.members)) if j != self.index]
