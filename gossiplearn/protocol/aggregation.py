"""The secure sum of a verified group, one member's side, in explicit steps.

Once the roster is known (its transcript T names this round instance), member i of m:

1. **Agree** (:meth:`Aggregation.start`): every member but the initiator sends every other
   member READY(T, the ROSTER statement it received). A READY with another transcript and a
   valid relayed ROSTER is a proof that the initiator signed two rosters; one without is its
   sender's fault. Nothing masked moves until every READY agreed: in round v2 an initiator
   that sent two members the roster in different orders made their masks add instead of
   cancel, and read the difference of their vectors.
2. **Share**: sends member p part p of its masked vector (PART shards): it encodes
   (w_i / W) * x_i in the ring, W the sum of the weights every member declared in its signed
   ACCEPT (all in the roster, so W is agreed with the transcript), and adds its pairwise masks.
   Pair seeds are derived from the transcript and mask signs from the order of the members'
   identity keys, so a mask cancels only between two members that hold the same transcript.
   This is the moment the contribution is spent (:attr:`Aggregation.shared`).
3. **Reduce**: it adds every member's piece of its part p into the sum as the shards arrive,
   and sends each shard of the reduced part to every member (REDUCED) as soon as every
   member's elements of it are in; the part's last shard carries the digest of the whole
   reduced part (hashed shard by shard as they go).
4. **Confirm**: once it holds every reduced part (each decoded into the average and hashed as
   its shards arrived, and the hash checked against the reducer's signed part digest), it
   checks the average is plausible and sends every member a CONFIRM: a digest of the
   transcript and every part digest, and the REDUCED statements (last shards' headers) it
   received. Nothing is applied yet.
5. **Done**: every other member's CONFIRM arrived and its digest equals this member's. A
   relayed statement that conflicts with one this member holds is an equivocation proof; a
   digest that differs without such a proof is its sender's fault (an honest member's digest
   can only differ from another honest member's if some reducer equivocated, and then its
   evidence proves it).

**The round streams.** Steps 2 to 4 overlap, shard by shard (as hivemind's butterfly
all-reduce does): :meth:`Aggregation.work` encodes and masks one shard of every part at a
time (the masks of that range only, the PRG seeked to it: crypto/masks.py), first while the
READYs travel and then sending each as it is masked; a reducer adds each PART shard as it
arrives and sends reduced shards on at once; a member decodes and hashes reduced shards as
they arrive. The driver calls :meth:`work` whenever it has nothing else to feed the machine
(``pending_work``). What is signed and checked is unchanged but for one thing: a reducer's
statement about its part (the digest CONFIRM compares) is signed once, in the last shard,
since it is known only then.

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
from dataclasses import dataclass

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
from gossiplearn.protocol.shards import Shard, make_shard, shard_layout

#: Adds a member's pairwise masks to ``vector`` in place: (vector, my index, seeds by index,
#: the element of the whole vector that ``vector`` starts at).
Masking = Callable[[np.ndarray, int, Mapping[int, bytes], int], object]
PAIRWISE_MASKS: Masking = apply_pairwise_masks

_MASK_LABEL = b"mask"
_CHANNEL_LABEL = b"bulk"
_DIGEST_PERSON = b"gossiplearn.cfm3"
_PART_CONTEXT = "gossiplearn round v3 reduced part digest"


def no_masks(
    vector: np.ndarray, index: int, seeds: Mapping[int, bytes], offset: int = 0
) -> np.ndarray:
    """The plaintext baseline's "masking": none (benchmarks only; see plaintext.py)."""
    return vector


def part_bounds(length: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges splitting ``length`` elements into ``parts`` pieces."""
    cuts = [p * length // parts for p in range(parts + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


#: What a masked shard's elements are replaced with once they went out.
_SENT = np.empty(0, np.uint8)

#: The wire dtype of each ring's elements.
RING_DTYPES = {32: "u4", 16: "u2", 8: "u1"}


def part_hasher() -> blake3:
    """A part digest computed incrementally: update it with the shards' data in order."""
    return blake3(derive_key_context=_PART_CONTEXT)


def part_digest(reduced: np.ndarray) -> bytes:
    """The digest a reducer signs in the last REDUCED shard of its part (ring elements of any
    width, little-endian): what :class:`_Incoming` hashes shard by shard."""
    data = np.ascontiguousarray(reduced, dtype=reduced.dtype.newbyteorder("<"))
    hasher = part_hasher()
    hasher.update(data.view(np.uint8).data)
    return hasher.digest(32)


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


class _Incoming:
    """Shards of one vector piece from one sender, taken in order of their offsets as they
    arrive (a shard ahead of a gap waits for it), bounded by the piece's expected size.

    Each element is taken exactly once: a shard that overlaps one taken or waiting is refused,
    and a complete set must cover the piece without a gap.
    """

    def __init__(self, expected_length: int, dtype: str) -> None:
        self.expected_length = expected_length
        self.dtype = dtype
        self.total: int | None = None
        self.indices: set[int] = set()
        self.received_elements = 0
        #: Elements [0, taken) were handed out by :meth:`add`, in order.
        self.taken = 0
        self._waiting: dict[int, Shard] = {}  # by offset

    def add(self, shard: Shard, what: str, blamed: tuple[bytes, ...]) -> list[Shard]:
        """Check and keep ``shard``; returns the shards that now continue the taken prefix,
        in order."""
        if shard.dtype != self.dtype:
            raise RoundFault(f"bad_{what}_dtype", blamed)
        if self.total is not None and shard.total != self.total:
            raise RoundFault(f"inconsistent_{what}_shards", blamed)
        if shard.index in self.indices:
            raise RoundFault(f"duplicate_{what}_shard", blamed)
        self.received_elements += shard.length
        if (
            self.received_elements > self.expected_length
            or shard.offset + shard.length > self.expected_length
        ):
            raise RoundFault(f"oversized_{what}", blamed)
        if shard.offset < self.taken or shard.offset in self._waiting:
            raise RoundFault(f"bad_{what}", blamed)  # overlaps a shard already in
        self.total = shard.total
        self.indices.add(shard.index)
        self._waiting[shard.offset] = shard
        ready = []
        while self.taken in self._waiting:
            nxt = self._waiting.pop(self.taken)
            ready.append(nxt)
            self.taken += nxt.length
        if len(self.indices) == self.total and not self.complete:
            raise RoundFault(f"bad_{what}", blamed)  # every shard in, and a gap or overlap
        return ready

    @property
    def complete(self) -> bool:
        return (
            self.total is not None
            and len(self.indices) == self.total
            and self.taken == self.expected_length
            and not self._waiting
        )


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
        itemsize = np.dtype(self._dtype).itemsize
        # What this member masks and sends, one shard of every part at a time: its own part
        # first (its share of the sum it reduces), then the next members' in turn from its
        # own index on, so that the reducers are not all served in the same order.
        self._layouts = [
            shard_layout(stop - begin, itemsize, shard_bytes) for begin, stop in self._bounds
        ]
        order = [(index + step) % m for step in range(m)]
        most = max(total for _, total in self._layouts)
        self._chunks = [(p, s) for s in range(most) for p in order if s < self._layouts[p][1]]
        self._masked_chunks: list[tuple[int, int, np.ndarray]] = []  # (part, shard, elements)
        self._chunks_sent = 0
        # Reducing part `index`: the sum so far, and each member's pieces, taken in order.
        self._sum: np.ndarray | None = np.zeros(end - start, dtype=self._dtype)
        self._own_taken = 0  # elements of this member's own piece added to the sum
        self._parts = {j: _Incoming(end - start, self._dtype) for j in range(m) if j != index}
        self._reduced_layout = shard_layout(end - start, itemsize, shard_bytes)
        self._reduced_sent = 0  # shards of the reduced part sent
        self._own_hasher: blake3 | None = part_hasher()
        self._own_digest: bytes | None = None
        # The reduced parts of the others, hashed and decoded as their shards arrive.
        self._reduced = {
            j: _Incoming(stop - begin, self._dtype)
            for j, (begin, stop) in enumerate(self._bounds)
            if j != index
        }
        self._hashers = {j: part_hasher() for j in self._reduced}
        self._average: np.ndarray | None = None
        self._ready: set[int] = set()
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

    # ---- step 2: share (streamed) ----

    @property
    def pending_work(self) -> bool:
        """Whether :meth:`work` has work to do: shards to encode and mask while the READYs
        travel (nothing goes out before they agreed), or masked shards still to send."""
        if self.step is Step.AGREE:
            return len(self._masked_chunks) < len(self._chunks)
        return self.step is Step.COLLECT and self._chunks_sent < len(self._chunks)

    def work(self) -> list[Outgoing]:
        """One step of this member's own work: encode and mask the next shard of every part;
        once every READY agreed, send them (and what its own shard lets it reduce)."""
        if not self.pending_work:
            return []
        if self.step is Step.AGREE:
            for _ in range(self._step_size(len(self._masked_chunks))):
                self._mask_next()
            return []
        return self._send_next() + self._progress()

    def _step_size(self, done: int) -> int:
        """Chunks in one step from chunk ``done`` on: one shard of every part that has one."""
        return len({part for part, _ in self._chunks[done : done + len(self.members)]})

    def _send_next(self) -> list[Outgoing]:
        out: list[Outgoing] = []
        for _ in range(self._step_size(self._chunks_sent)):
            if self._chunks_sent == len(self._masked_chunks):
                self._mask_next()
            part, shard, elements = self._masked_chunks[self._chunks_sent]
            out += self._send_chunk(part, shard, elements)
            self._masked_chunks[self._chunks_sent] = (part, shard, _SENT)  # not kept twice
            self._chunks_sent += 1
        return out

    def _mask_next(self) -> None:
        """Encode and mask the next shard of the plan (masks of that range only)."""
        part, shard = self._chunks[len(self._masked_chunks)]
        start = self._bounds[part][0]
        per_shard, _ = self._layouts[part]
        begin = start + shard * per_shard
        stop = min(begin + per_shard, self._bounds[part][1])
        share = self.group.weights[self.index] / self._total_weight
        values = self.contribution.vector[begin:stop]
        if self._narrow is not None:
            encoded, clipped = self._narrow.encode(values, share, self._rounding)
        else:
            encoded, clipped = encode(values, self.group.params.frac_bits, scale=share)
        self.clipped += clipped
        self._masking(encoded, self._rank[self.index], self._mask_seeds, begin)
        self._masked_chunks.append((part, shard, encoded))

    def _send_chunk(self, part: int, shard: int, elements: np.ndarray) -> list[Outgoing]:
        per_shard, total = self._layouts[part]
        if part == self.index:
            assert self._sum is not None
            at = shard * per_shard
            piece = self._sum[at : at + elements.size]
            np.add(piece, elements, out=piece)
            self._own_taken = at + elements.size
            return []
        data = make_shard(elements, shard, total, shard * per_shard)
        return [(part, Part(self.transcript, part, data))]

    def _share(self) -> list[Outgoing]:
        """Every READY agreed: this member's masked shards may go out, the first of them now.
        The moment its contribution is spent."""
        self.shared = True
        return self._send_next()

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
            incoming = self._parts[sender]
            taken = incoming.add(body.shard, "part", blamed)
            assert self._sum is not None  # a round that ended gets no more frames
            for shard in taken:
                piece = self._sum[shard.offset : shard.offset + shard.length]
                np.add(piece, shard.array(), out=piece)
        elif isinstance(body, Reduced):
            if body.part != sender:
                raise RoundFault("misattributed_reduced", blamed)
            if body.final:
                known = self._seen.get(sender)
                if known is None:
                    self._seen[sender] = (body.part_digest, envelope.statement)
                elif known[0] != body.part_digest:
                    proof = EquivocationProof(known[1], envelope.statement).encode()
                    raise RoundFault("equivocation", blamed, proof)
            reduced = self._reduced[sender]
            start = self._bounds[sender][0]
            for shard in reduced.add(body.shard, "reduced", blamed):
                self._hashers[sender].update(shard.data)
                self._decode_into_average(start + shard.offset, shard.array())
            if reduced.complete:
                claimed = self._seen.get(sender)
                if claimed is None or self._hashers[sender].digest(32) != claimed[0]:
                    raise RoundFault("bad_reduced_digest", blamed)
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
        if self._chunks_sent < len(self._chunks):
            return ()  # this member's own shards are still going out: it waits for nobody
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
        self._masked_chunks = []
        self._sum = self._average = None
        # Hash states of the streamed parts: done with, and a remembered round must pickle
        # (memory mode moves round machines between worker processes).
        self._own_hasher = None
        self._hashers = {}
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
        """Send every shard of the reduced part whose elements every member has added."""
        if self._sum is None or self._own_digest is not None:
            return []
        ready = min([self._own_taken, *(incoming.taken for incoming in self._parts.values())])
        per_shard, total = self._reduced_layout
        out: list[Outgoing] = []
        start = self._bounds[self.index][0]
        while self._reduced_sent < total:
            index = self._reduced_sent
            at = index * per_shard
            end = min(at + per_shard, self._sum.size)
            if end > ready:
                break
            shard = make_shard(self._sum[at:end], index, total, at)
            assert self._own_hasher is not None
            self._own_hasher.update(shard.data)
            self._decode_into_average(start + at, self._sum[at:end])
            self._reduced_sent += 1
            digest = b""
            if index == total - 1:
                digest = self._own_digest = self._own_hasher.digest(32)
            reduced = Reduced(self.transcript, self.index, digest, shard)
            out += [(j, reduced) for j in self._others()]
        return out

    def _decode_into_average(self, at: int, piece: np.ndarray) -> None:
        """decode(sum) of ``piece`` straight into the float32 average, shard by shard (no
        full-size temporaries)."""
        if self._average is None:
            self._average = np.empty(self.group.params.length, dtype=np.float32)
        target = self._average[at : at + piece.size]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # see _confirm
            if self._narrow is not None:
                self._narrow.decode(piece, out=target)
            else:
                decode(piece, self.group.params.frac_bits, RING32, np.float32, out=target)

    def _view_complete(self) -> bool:
        return self._own_digest is not None and all(s.complete for s in self._reduced.values())

    def _confirm(self) -> list[Outgoing]:
        assert self._own_digest is not None
        # Every reduced part was decoded into the average and its hash checked against its
        # reducer's signed digest as its shards arrived (receive).
        average = self._average
        if average is None:
            average = self._average = np.empty(0, dtype=np.float32)
        digests = [
            self._own_digest if j == self.index else self._seen[j][0]
            for j in range(len(self.members))
        ]
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
