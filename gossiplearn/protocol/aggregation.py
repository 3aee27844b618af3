"""The secure sum of a verified group, one member's side, in explicit steps.

Once the roster is known, member i of m:

1. **Share** (:meth:`Aggregation.start`): sends every member its weight w_i masked in Z/2^64
   (WEIGHT_SHARE), and member p part p of its masked vector (PART shards): it encodes
   (w_i / S) * x_i in Z/2^32, S = m * max_weight, and adds its pairwise masks. S is known
   from the roster and the network-wide cap alone, so nothing a member sends depends on what
   others declared: in version 1 members scaled by the total weight W, and one insider that
   sent a different WEIGHT_SHARE to each member made the others' contributions vanish.
2. **Reduce**: once it holds every member's piece of its part p, it sums them (the masks
   cancel) and sends the reduced part to every member (REDUCED shards, each carrying the
   digest of the whole reduced part).
3. **Confirm**: once it holds every WEIGHT_SHARE and every reduced part, it computes W (which
   must lie within what the cap allows), the average decode(sum) * S / W, checks it is
   plausible, and sends every member a CONFIRM: a digest of everything that determines the
   result (parameters, roster, every share, every part digest) and the statements of what it
   received. Nothing is applied yet.
4. **Done**: every other member's CONFIRM arrived, its evidence matches what this member
   received, and its digest equals this member's: all hold the same W and the same average.
   A relayed statement that conflicts with one this member holds is an equivocation proof.

Any failure raises :class:`~gossiplearn.protocol.events.RoundFault` naming the reason and the
members held responsible; :meth:`Aggregation.missing` says whom a timeout blames.

Masking is passed in (``masking``): the pairwise masks, or none for the plaintext baseline
that measures what the masks cost.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import msgpack
import numpy as np
from blake3 import blake3

from gossiplearn.crypto.agreement import KeyAgreementError, derive_pair_seed, shared_secret
from gossiplearn.crypto.masks import apply_pairwise_masks
from gossiplearn.crypto.ring import RING32, decode, encode
from gossiplearn.protocol.envelope import Envelope, Limits, verify_statement
from gossiplearn.protocol.errors import ProtocolError
from gossiplearn.protocol.events import RoundFault
from gossiplearn.protocol.evidence import EquivocationProof, Slot, claim_of
from gossiplearn.protocol.matchmaking import VerifiedGroup
from gossiplearn.protocol.messages import Confirm, Message, Part, Reduced, WeightShare
from gossiplearn.protocol.shards import Shard, ordered_shards, split_shards

#: Adds a member's pairwise masks to ``vector`` in place: (vector, my index, seeds by index).
Masking = Callable[[np.ndarray, int, Mapping[int, bytes]], object]
PAIRWISE_MASKS: Masking = apply_pairwise_masks

_MASK_LABEL = b"mask"
_WEIGHT_LABEL = b"weight"
_CHANNEL_LABEL = b"bulk"
_DIGEST_PERSON = b"gossiplearn.cfm2"
_PART_CONTEXT = "gossiplearn round v2 reduced part digest"


def no_masks(vector: np.ndarray, index: int, seeds: Mapping[int, bytes]) -> np.ndarray:
    """The plaintext baseline's "masking": none (benchmarks only; see plaintext.py)."""
    return vector


def part_bounds(length: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges splitting ``length`` elements into ``parts`` pieces."""
    cuts = [p * length // parts for p in range(parts + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def part_digest(reduced: np.ndarray) -> bytes:
    """The digest a reducer signs in every REDUCED shard of its part."""
    data = np.ascontiguousarray(reduced, dtype="<u4")
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
    COLLECT = "collect"  # own shares and parts sent; collecting shares, parts, reduced parts
    CONFIRM = "confirm"  # own CONFIRM sent; checking the others'
    DONE = "done"


Outgoing = tuple[int, Message]  # (member index, body)


@dataclass
class _ShardSet:
    """Shards of one vector piece from one sender, bounded by the piece's expected size."""

    expected_length: int
    shards: dict[int, Shard] = field(default_factory=dict)
    total: int | None = None
    received_elements: int = 0

    def add(self, shard: Shard, what: str, blamed: tuple[bytes, ...]) -> None:
        if shard.dtype != "u4":
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
                dtype="u4",
                length=self.expected_length,
                digests_checked=True,
            )
        except ProtocolError:
            raise RoundFault(f"bad_{what}", blamed) from None


class Aggregation:
    """Member ``index`` of ``group``: its secure sum from shares to agreed average."""

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
        confirm: bool = True,
        weight_bounds: bool = True,
    ) -> None:
        self.group = group
        self.members = group.members
        self.index = index
        self.contribution = contribution
        self.step = Step.COLLECT
        self.result: Result | None = None
        self._masking = masking
        self._shard_bytes = shard_bytes
        self._max_abs_average = max_abs_average
        self._limits = limits
        # Safeguards a test may switch off to show the attack each one stops (RoundConfig).
        self._agree = confirm
        self._weight_bounds = weight_bounds
        m = len(self.members)
        self._scale_total = m * group.params.max_weight  # S
        self._bounds = part_bounds(group.params.length, m)
        self._mask_seeds: dict[int, bytes] = {}
        self._weight_seeds: dict[int, bytes] = {}
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
            self._mask_seeds[j] = derive_pair_seed(secret, group.id, me, member, _MASK_LABEL)
            self._weight_seeds[j] = derive_pair_seed(secret, group.id, me, member, _WEIGHT_LABEL)
            self.channel_keys[member] = derive_pair_seed(
                secret, group.id, me, member, _CHANNEL_LABEL
            )
        start, end = self._bounds[index]
        self._parts = {j: _ShardSet(end - start) for j in range(m) if j != index}
        self._reduced = {
            j: _ShardSet(stop - begin) for j, (begin, stop) in enumerate(self._bounds) if j != index
        }
        self._shares: dict[int, int] = {}
        self._total_weight: int | None = None
        self._own_part: np.ndarray | None = None
        self._own_reduced: np.ndarray | None = None
        # (sender index, slot) -> (claim, statement) of what this member received
        self._seen: dict[tuple[int, Slot], tuple[bytes, bytes]] = {}
        # what this member itself claims, by slot (it holds no statement of its own frames)
        self._own_claims: dict[Slot, bytes] = {}
        if index == 0:
            self._own_claims[("ROSTER", 0)] = msgpack.packb(
                group.roster.to_wire(), use_bin_type=True
            )
        elif group.roster_statement:
            self._seen[(0, ("ROSTER", 0))] = (
                msgpack.packb(group.roster.to_wire(), use_bin_type=True),
                group.roster_statement,
            )
        self._confirms: dict[int, Confirm] = {}
        self._checked: set[int] = set()
        self._digest: bytes | None = None
        self.clipped = 0

    # ---- step 1: share ----

    def start(self) -> list[Outgoing]:
        """This member's WEIGHT_SHAREs and PARTs: the moment its contribution is spent."""
        out: list[Outgoing] = []
        share = np.array([self.contribution.weight], dtype=np.uint64)
        self._masking(share, self.index, self._weight_seeds)
        self._shares[self.index] = int(share[0])
        self._own_claims[("WEIGHT_SHARE", 0)] = int(share[0]).to_bytes(8, "big")
        out += [(j, WeightShare(int(share[0]))) for j in self._others()]

        encoded, self.clipped = encode(
            self.contribution.vector,
            self.group.params.frac_bits,
            scale=self.contribution.weight / self._scale_total,
        )
        self._masking(encoded, self.index, self._mask_seeds)
        for j, (start, end) in enumerate(self._bounds):
            if j == self.index:
                self._own_part = encoded[start:end]
                continue
            out += [
                (j, Part(j, shard)) for shard in split_shards(encoded[start:end], self._shard_bytes)
            ]
        return out + self._progress()

    # ---- inputs ----

    def receive(self, sender: int, envelope: Envelope) -> list[Outgoing]:
        """A verified message of this group from member ``sender``."""
        blamed = (self.members[sender],)
        claim = claim_of(envelope)
        if claim is not None:
            self._record(sender, claim, envelope.statement)
        body = envelope.body
        if isinstance(body, WeightShare):
            self._shares[sender] = body.value  # a different second value was caught above
        elif isinstance(body, Part):
            if body.part != self.index:
                raise RoundFault("misaddressed_part", blamed)
            self._parts[sender].add(body.shard, "part", blamed)
        elif isinstance(body, Reduced):
            if body.part != sender:
                raise RoundFault("misattributed_reduced", blamed)
            self._reduced[sender].add(body.shard, "reduced", blamed)
        elif isinstance(body, Confirm):
            if sender in self._confirms:
                raise RoundFault("unexpected_confirm", blamed)
            self._confirms[sender] = body
        else:
            raise RoundFault("unexpected_" + envelope.type.lower(), blamed)
        return self._progress()

    def missing(self) -> tuple[bytes, ...]:
        """Whom a timeout now blames: the members whose messages of the earliest unfinished
        step are missing (a reducer that lacks a part cannot send its REDUCED: only whoever
        withheld the part is to blame)."""
        first = [j for j in self._others() if j not in self._shares or not self._parts[j].complete]
        if first:
            return tuple(self.members[j] for j in first)
        reducers = [j for j, shard_set in self._reduced.items() if not shard_set.complete]
        if reducers:
            return tuple(self.members[j] for j in reducers)
        return tuple(self.members[j] for j in self._others() if j not in self._confirms)

    # ---- the steps ----

    def _progress(self) -> list[Outgoing]:
        out: list[Outgoing] = []
        m = len(self.members)
        if self._total_weight is None and len(self._shares) == m:
            self._total_weight = self._check_total(sum(self._shares.values()) % (1 << 64))
        if self._own_reduced is None and all(s.complete for s in self._parts.values()):
            out += self._reduce()
        if self.step is Step.COLLECT and self._view_complete():
            out += self._confirm()
            if not self._agree:
                self.step = Step.DONE
        if self.step is Step.CONFIRM:
            for j in sorted(set(self._confirms) - self._checked):
                self._check_evidence(j, self._confirms[j])
                self._checked.add(j)
            if len(self._checked) == m - 1:
                # Digests are compared only once every CONFIRM's evidence was searched for a
                # proof: a member that disagrees because someone equivocated to it is not to
                # blame, and the evidence of some other member names the equivocator.
                disagreeing = [
                    j for j in sorted(self._checked) if self._confirms[j].digest != self._digest
                ]
                if disagreeing:
                    raise RoundFault("disagreement", tuple(self.members[j] for j in disagreeing))
                self.step = Step.DONE
        return out

    def _check_total(self, total: int) -> int:
        # Each weight is in [1, max_weight]: W outside these bounds means a member declared
        # more (the weight lever) or sent a garbage share.
        m, own, cap = len(self.members), self.contribution.weight, self.group.params.max_weight
        if self._weight_bounds and not own + (m - 1) <= total <= own + (m - 1) * cap:
            raise RoundFault("bad_total_weight")
        return total

    def _reduce(self) -> list[Outgoing]:
        assert self._own_part is not None
        reduced = self._own_part.copy()
        for j, shard_set in self._parts.items():
            for shard in shard_set.ordered("part", (self.members[j],)):
                piece = reduced[shard.offset : shard.offset + shard.length]
                np.add(piece, shard.array(), out=piece)
        self._own_reduced = reduced
        digest = part_digest(reduced)
        self._own_claims[("REDUCED", self.index)] = digest
        shards = split_shards(reduced, self._shard_bytes)
        return [(j, Reduced(self.index, digest, shard)) for j in self._others() for shard in shards]

    def _view_complete(self) -> bool:
        return (
            self._own_reduced is not None
            and self._total_weight is not None
            and all(s.complete for s in self._reduced.values())
        )

    def _confirm(self) -> list[Outgoing]:
        assert self._own_reduced is not None and self._total_weight is not None
        params = self.group.params
        # decode(sum) x S / W straight into the float32 average, part by part (no full-size
        # temporaries: a 10M-element round used to make four).
        average = np.empty(params.length, dtype=np.float32)
        scale = self._scale_total / max(self._total_weight, 1)
        digests = []
        for j, (start, _end) in enumerate(self._bounds):
            if j == self.index:
                pieces = [(0, self._own_reduced)]
                digests.append(self._own_claims[("REDUCED", j)])
            else:
                # Shard by shard, never joined: the part's digest is the hash of their data
                # in order (the same bytes part_digest hashes), and each decodes in place.
                blamed = (self.members[j],)
                shards = self._reduced[j].ordered("reduced", blamed)
                hasher = blake3(derive_key_context=_PART_CONTEXT)
                for shard in shards:
                    hasher.update(shard.data)
                claimed = self._seen[(j, ("REDUCED", j))][0]
                if hasher.digest(32) != claimed:
                    raise RoundFault("bad_reduced_digest", blamed)
                digests.append(claimed)
                pieces = [(shard.offset, shard.array()) for shard in shards]
            for offset, piece in pieces:
                at = start + offset
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # see below
                    decode(
                        piece,
                        params.frac_bits,
                        RING32,
                        np.float32,
                        scale=scale,
                        out=average[at : at + piece.size],
                    )
        # Garbage from a member decodes to values spread over the ring's range; every honest
        # member holds this same average, so all reach the same verdict (NaN fails it too:
        # min and max are NaN if any element is).
        bound = self._max_abs_average
        if average.size and not (-bound <= average.min() and average.max() <= bound):
            raise RoundFault("implausible_average")
        self.result = Result(average, self._total_weight, self.clipped)
        self._digest = self._round_digest(digests)
        if not self._agree:
            return []
        evidence = [
            statement
            for (_, slot), (_, statement) in sorted(self._seen.items())
            if slot[0] != "CONFIRM"
        ]
        self.step = Step.CONFIRM
        confirm = Confirm(self._digest, tuple(evidence))
        return [(j, confirm) for j in self._others()]

    def _round_digest(self, part_digests: list[bytes]) -> bytes:
        params = self.group.params
        content = msgpack.packb(
            [
                self.group.id,
                self.group.roster.to_wire(),
                [params.schema_hash, params.length, params.frac_bits, params.max_weight],
                [self._shares[j] for j in range(len(self.members))],
                part_digests,
            ],
            use_bin_type=True,
        )
        return hashlib.blake2b(content, digest_size=32, person=_DIGEST_PERSON).digest()

    def _check_evidence(self, j: int, confirm: Confirm) -> None:
        """Compare member j's evidence with what this member holds: a conflicting statement is
        a proof against its sender; missing, extra or invalid evidence is j's fault."""
        member = self.members[j]
        expected = self._expected_evidence(j)
        found: set[tuple[int, Slot]] = set()
        faulty = False
        for statement in confirm.evidence:
            try:
                envelope = verify_statement(statement, limits=self._limits)
            except ProtocolError:
                faulty = True
                continue
            claim = claim_of(envelope)
            if (
                claim is None
                or envelope.group != self.group.id
                or envelope.recipient != member
                or envelope.sender not in self.members
            ):
                faulty = True
                continue
            sender = self.members.index(envelope.sender)
            key = (sender, claim[0])
            if key not in expected or key in found:
                faulty = True
                continue
            found.add(key)
            if sender == self.index:
                faulty |= self._own_claims.get(claim[0]) != claim[1]
                continue
            mine = self._seen.get(key)
            if mine is not None and mine[0] != claim[1]:
                proof = EquivocationProof(mine[1], statement).encode()
                raise RoundFault("equivocation", (self.members[sender],), proof)
        if faulty or found != expected:
            raise RoundFault("bad_confirm", (member,))

    def _expected_evidence(self, j: int) -> set[tuple[int, Slot]]:
        keys = {(k, ("WEIGHT_SHARE", 0)) for k in range(len(self.members)) if k != j}
        keys |= {(k, ("REDUCED", k)) for k in range(len(self.members)) if k != j}
        if j != 0:
            keys.add((0, ("ROSTER", 0)))
        return keys

    def _record(self, sender: int, claim: tuple[Slot, bytes], statement: bytes) -> None:
        """Keep the first statement per (sender, slot); a conflicting one is a proof."""
        slot, value = claim
        known = self._seen.get((sender, slot))
        if known is None:
            self._seen[(sender, slot)] = (value, statement)
        elif known[0] != value:
            proof = EquivocationProof(known[1], statement).encode()
            raise RoundFault("equivocation", (self.members[sender],), proof)

    def _others(self) -> list[int]:
        return [j for j in range(len(self.members)) if j != self.index]
