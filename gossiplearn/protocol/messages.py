"""Typed bodies of every message gossiplearn peers exchange, with their wire schemas.

Matchmaking: INVITE, ACCEPT, BUSY, ROSTER, CANCEL. The round: READY (the roster agreement),
PART (a masked shard), REDUCED (a reduced part), CONFIRM (the result agreement), ABORT. Every
round message after the ROSTER carries the round's *transcript* (see matchmaking.py), which
binds it to one round instance. The daemon: PEERS
(signed peer records), STATUS. Each class validates itself on construction, so a body built
locally and one decoded from the wire obey the same rules.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack

from gossiplearn.crypto.signing import Signer, verify
from gossiplearn.protocol.errors import SchemaViolation
from gossiplearn.protocol.schema import Record, array, binary, text, uint
from gossiplearn.protocol.shards import SHARD_SCHEMA, DetachedShard, Shard

KEY_BYTES = 32
SIGNATURE_BYTES = 64
HASH_BYTES = 32
MIN_GROUP = 3
MAX_GROUP = 16
MAX_FRAC_BITS = 30
#: Ring widths a group may agree on (see crypto/narrow.py for 8 and 16).
RING_BITS = (8, 16, 32)
#: clip = 2^(clip_exponent - CLIP_EXPONENT_OFFSET): a power of two in [2^-16, 2^16].
CLIP_EXPONENT_OFFSET = 16
MAX_CLIP_EXPONENT = 32
MAX_VECTOR_LENGTH = 1 << 34
#: A signed ACCEPT envelope is ~250 bytes; the bound leaves room without inviting abuse.
MAX_ACCEPT_FRAME = 1024
MAX_REASON = 256
MAX_PEER_RECORDS = 64
MAX_ADDRS = 8
MAX_ADDR_LEN = 256
MAX_STATUS_JSON = 256 * 1024
#: Weights are in [1, MAX_WEIGHT]; the network-wide cap ``max_weight`` is at most this.
MAX_WEIGHT = (1 << 32) - 1
#: A statement (a signed message without shard data, see envelope.py) relayed as evidence.
#: The largest is a ROSTER of MAX_GROUP members: 16 ACCEPTs of at most MAX_ACCEPT_FRAME
#: bytes plus 16 keys and the envelope, ~17.3 KiB.
MAX_STATEMENT = 24 * 1024
#: A CONFIRM relays one REDUCED statement per other part: at most MAX_GROUP - 1, each a
#: signed shard header of ~420 bytes (bounded here at 1 KiB), so that a CONFIRM itself (at most
#: ~16 KiB) is small enough to be relayed as a statement in an ABORT.
MAX_EVIDENCE = MAX_GROUP - 1
MAX_REDUCED_STATEMENT = 1024
#: A transcript id: BLAKE2b-256 of the group id and the ROSTER (see matchmaking.transcript_of).
TRANSCRIPT_BYTES = 32
#: An equivocation proof: two statements and their framing.
MAX_PROOF = 2 * MAX_STATEMENT + 256

_member = binary(KEY_BYTES)
_members = array(_member, MAX_GROUP, MIN_GROUP)
_transcript = binary(TRANSCRIPT_BYTES)


def _ring_bits(value: Any, where: str) -> int:
    bits = uint(32)(value, where)
    if bits not in RING_BITS:
        raise SchemaViolation(f"{where}: {bits} is not one of {RING_BITS}")
    return bits


class Message:
    """Base of every body. Subclasses are frozen dataclasses with a TYPE and a SCHEMA."""

    TYPE: ClassVar[str]
    SCHEMA: ClassVar[Record]

    def to_wire(self) -> dict[str, Any]:
        return {name: _to_wire(getattr(self, name)) for name, _ in self.SCHEMA.fields}

    def to_signed_wire(self) -> dict[str, Any]:
        """The wire form the sender's signature covers: the same, but shard data detached."""
        return self.to_wire()

    @classmethod
    def from_wire(cls, value: Any, *, detached: bool = False) -> Message:
        """Validate a decoded body. ``detached``: shards carry no data (a statement)."""
        return cls(**cls.SCHEMA.validate(value, f"body<{cls.TYPE}>"))


def _to_wire(value: Any) -> Any:
    kind = type(value)
    if kind is bytes or kind is int or kind is str:  # most fields: no dataclass to look for
        return value
    if isinstance(value, tuple):
        return [_to_wire(v) for v in value]
    if dataclasses.is_dataclass(value) and hasattr(value, "to_wire"):
        return value.to_wire()
    return value


def _require_distinct(members: tuple[bytes, ...], where: str) -> None:
    if len(set(members)) != len(members):
        raise SchemaViolation(f"{where}: members repeat")


@dataclass(frozen=True)
class Invite(Message):
    """Initiator -> invitee: join group ``envelope.group`` (the proposed members, initiator first)."""

    TYPE = "INVITE"
    SCHEMA = Record(
        TYPE,
        (
            ("members", _members),
            ("schema_hash", binary(HASH_BYTES)),
            ("length", uint(MAX_VECTOR_LENGTH)),
            ("frac_bits", uint(MAX_FRAC_BITS)),
            ("max_weight", uint(MAX_WEIGHT, minimum=1)),
            ("deadline_ms", uint()),
            ("ring_bits", _ring_bits),
            ("clip_exponent", uint(MAX_CLIP_EXPONENT)),
        ),
    )
    members: tuple[bytes, ...]
    schema_hash: bytes
    length: int
    frac_bits: int
    #: The network-wide weight cap; an invitee with another one answers BUSY.
    max_weight: int
    deadline_ms: int
    #: The ring of the secure sum: 32 (round(x 2^frac_bits)), or 16 or 8 (a scale fixed by
    #: the clip, see crypto/narrow.py): clip = 2^(clip_exponent - 16), in [2^-16, 2^16].
    ring_bits: int = 32
    clip_exponent: int = 19

    def __post_init__(self) -> None:
        _require_distinct(self.members, "INVITE")


@dataclass(frozen=True)
class Accept(Message):
    """Invitee -> initiator: a fresh X25519 key for this group only, signed via the envelope,
    and the weight this member declares for the round (in [1, max_weight]; visible to every
    member through the ROSTER)."""

    TYPE = "ACCEPT"
    SCHEMA = Record(
        TYPE,
        (
            ("ephemeral_key", binary(KEY_BYTES)),
            ("schema_hash", binary(HASH_BYTES)),
            ("weight", uint(MAX_WEIGHT, minimum=1)),
        ),
    )
    ephemeral_key: bytes
    schema_hash: bytes
    weight: int


@dataclass(frozen=True)
class Busy(Message):
    TYPE = "BUSY"
    SCHEMA = Record(TYPE, (("reason", text(MAX_REASON)),))
    reason: str


@dataclass(frozen=True)
class Roster(Message):
    """Initiator -> members: the final ordered group with every member's signed ACCEPT frame,
    and the round's parameters (those of the INVITE).

    ``accepts[i]`` is member i's complete signed ACCEPT envelope (the initiator's own too), so
    each member verifies every ephemeral key and weight itself and the initiator cannot
    substitute one. The ROSTER fixes everything the round's transcript covers: members then
    check, with READY, that they all hold the same one before any masked data moves.
    """

    TYPE = "ROSTER"
    SCHEMA = Record(
        TYPE,
        (
            ("members", _members),
            ("accepts", array(binary(max_size=MAX_ACCEPT_FRAME), MAX_GROUP, MIN_GROUP)),
            ("schema_hash", binary(HASH_BYTES)),
            ("length", uint(MAX_VECTOR_LENGTH)),
            ("frac_bits", uint(MAX_FRAC_BITS)),
            ("max_weight", uint(MAX_WEIGHT, minimum=1)),
            ("deadline_ms", uint()),
            ("ring_bits", _ring_bits),
            ("clip_exponent", uint(MAX_CLIP_EXPONENT)),
        ),
    )
    members: tuple[bytes, ...]
    accepts: tuple[bytes, ...]
    schema_hash: bytes
    length: int
    frac_bits: int
    max_weight: int
    deadline_ms: int
    ring_bits: int = 32
    clip_exponent: int = 19

    def __post_init__(self) -> None:
        _require_distinct(self.members, "ROSTER")
        if len(self.accepts) != len(self.members):
            raise SchemaViolation("ROSTER: one ACCEPT per member is required")


@dataclass(frozen=True)
class Cancel(Message):
    TYPE = "CANCEL"
    SCHEMA = Record(TYPE, (("reason", text(MAX_REASON)),))
    reason: str


@dataclass(frozen=True)
class Ready(Message):
    """Member -> every other member (the initiator included), once its ROSTER verified: "I hold
    the roster whose transcript is ``transcript``", with the ROSTER statement it received
    (``roster``), so a member holding another roster can prove that the initiator signed two.
    Nobody sends masked data before every other member's READY agreed (the initiator, whose
    own ROSTER is its statement, sends none)."""

    TYPE = "READY"
    SCHEMA = Record(TYPE, (("transcript", _transcript), ("roster", binary(max_size=MAX_STATEMENT))))
    transcript: bytes
    roster: bytes


class _ShardMessage(Message):
    """A body carrying one shard (its field ``shard``) of part ``part`` of the group's vector."""

    transcript: bytes
    part: int
    shard: Shard

    def to_signed_wire(self) -> dict[str, Any]:
        wire = self.to_wire()
        wire["shard"] = self.shard.detached().to_wire()
        return wire

    @classmethod
    def from_wire(cls, value: Any, *, detached: bool = False) -> Message:
        fields = cls.SCHEMA.validate(value, f"body<{cls.TYPE}>")
        shard_class = DetachedShard if detached else Shard
        fields["shard"] = shard_class(**fields["shard"])
        return cls(**fields)


@dataclass(frozen=True)
class Part(_ShardMessage):
    """One shard of a member's masked part ``part``, sent to the member that reduces it."""

    TYPE = "PART"
    SCHEMA = Record(
        TYPE,
        (("transcript", _transcript), ("part", uint(MAX_GROUP - 1)), ("shard", SHARD_SCHEMA)),
    )
    transcript: bytes
    part: int
    shard: Shard


@dataclass(frozen=True)
class Reduced(_ShardMessage):
    """One shard of reduced part ``part`` (that part of the group's sum), sent to every member.

    The round streams: a reducer sends each shard as soon as every member's pieces of it are
    in, before the rest of the part is reduced. So only the part's last shard (index total - 1)
    carries ``part_digest``, the digest of the whole reduced part, hashed incrementally over
    the shards in order; the others carry an empty one. That one signed header commits its
    reducer to the entire part, so members compare what they received with a single relayed
    statement per part (see CONFIRM), and a receiver that hashed the shards it got checks
    them against it.
    """

    TYPE = "REDUCED"
    SCHEMA = Record(
        TYPE,
        (
            ("transcript", _transcript),
            ("part", uint(MAX_GROUP - 1)),
            ("part_digest", binary(sizes=(0, HASH_BYTES))),
            ("shard", SHARD_SCHEMA),
        ),
    )
    transcript: bytes
    part: int
    part_digest: bytes
    shard: Shard

    def __post_init__(self) -> None:
        last = self.shard.index == self.shard.total - 1
        if last != bool(self.part_digest):
            raise SchemaViolation("REDUCED: the part digest comes with the last shard only")

    @property
    def final(self) -> bool:
        """The part's last shard: its header is the reducer's statement about the part."""
        return bool(self.part_digest)


@dataclass(frozen=True)
class Confirm(Message):
    """The result agreement: what this member holds, before it applies anything.

    ``digest`` covers the transcript (members, weights, parameters, ephemeral keys) and every
    reduced part's digest, so equal digests mean equal averages. ``evidence`` is the REDUCED
    statements (signed shard headers, data left out) this member received, one per other
    part. A receiver compares them with its own: two validly signed, conflicting statements
    from one reducer prove that it equivocated.
    """

    TYPE = "CONFIRM"
    SCHEMA = Record(
        TYPE,
        (
            ("transcript", _transcript),
            ("digest", binary(HASH_BYTES)),
            ("evidence", array(binary(max_size=MAX_REDUCED_STATEMENT), MAX_EVIDENCE)),
        ),
    )
    transcript: bytes
    digest: bytes
    evidence: tuple[bytes, ...]


@dataclass(frozen=True)
class Abort(Message):
    """The round is over for everyone.

    ``transcript``: the round's, or empty if the sender never verified a roster. ``proof``: an
    encoded equivocation proof about a member of this round (or empty): a receiver that
    verifies it refuses the equivocator too. ``accused``: the sender's report, a claim
    nobody can verify, which group testing follows from member to member (suspicion.py). ``evidence``: a statement the sender holds (the
    CONFIRM or REDUCED of a member that disagreed with it, or empty): a receiver that holds a
    conflicting statement of the same member and slot builds the proof itself, even after it
    finished the round.
    """

    TYPE = "ABORT"
    SCHEMA = Record(
        TYPE,
        (
            ("transcript", binary(sizes=(0, TRANSCRIPT_BYTES))),
            ("reason", text(MAX_REASON)),
            ("proof", binary(max_size=MAX_PROOF)),
            ("evidence", binary(max_size=MAX_STATEMENT)),
            ("accused", array(_member, MAX_GROUP)),
        ),
    )
    transcript: bytes
    reason: str
    proof: bytes = b""
    evidence: bytes = b""
    #: Whom the sender holds responsible: the members it blamed, or, once the round passed
    #: its deadline, those whose messages it still waited for (its report for group testing).
    accused: tuple[bytes, ...] = ()


_PEER_RECORD_DOMAIN = "gossiplearn/peer-record/1"
PEER_RECORD_SCHEMA = Record(
    "peer_record",
    (
        ("key", binary(KEY_BYTES)),
        ("addrs", array(text(MAX_ADDR_LEN), MAX_ADDRS)),
        ("seq", uint()),
        ("expires_ms", uint()),
        ("sig", binary(SIGNATURE_BYTES)),
    ),
)


@dataclass(frozen=True)
class PeerRecord:
    """Where a peer listens, signed by that peer itself, valid until ``expires_ms``."""

    key: bytes
    addrs: tuple[str, ...]
    seq: int
    expires_ms: int
    sig: bytes

    def to_wire(self) -> dict[str, Any]:
        return {name: _to_wire(getattr(self, name)) for name, _ in PEER_RECORD_SCHEMA.fields}

    @staticmethod
    def signed_bytes(key: bytes, addrs: tuple[str, ...], seq: int, expires_ms: int) -> bytes:
        return msgpack.packb(
            [_PEER_RECORD_DOMAIN, key, list(addrs), seq, expires_ms], use_bin_type=True
        )

    @classmethod
    def create(
        cls, signer: Signer, key: bytes, addrs: tuple[str, ...], seq: int, expires_ms: int
    ) -> PeerRecord:
        sig = signer.sign(cls.signed_bytes(key, addrs, seq, expires_ms))
        return cls(key, tuple(addrs), seq, expires_ms, sig)

    def verify(self, now_ms: int) -> bool:
        """True iff signed by ``key`` and not expired."""
        if self.expires_ms <= now_ms:
            return False
        message = self.signed_bytes(self.key, self.addrs, self.seq, self.expires_ms)
        return verify(self.key, message, self.sig)


@dataclass(frozen=True)
class Peers(Message):
    """Peer exchange: signed records of admitted peers the sender knows."""

    TYPE = "PEERS"
    SCHEMA = Record(TYPE, (("records", array(PEER_RECORD_SCHEMA, MAX_PEER_RECORDS)),))
    records: tuple[PeerRecord, ...]

    @classmethod
    def from_wire(cls, value: Any, *, detached: bool = False) -> Message:
        fields = cls.SCHEMA.validate(value, f"body<{cls.TYPE}>")
        return cls(tuple(PeerRecord(**record) for record in fields["records"]))


@dataclass(frozen=True)
class Status(Message):
    """A status request (empty ``json``) or a response (the status document as JSON text)."""

    TYPE = "STATUS"
    SCHEMA = Record(TYPE, (("json", text(MAX_STATUS_JSON)),))
    json: str


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Invite,
        Accept,
        Busy,
        Roster,
        Cancel,
        Ready,
        Part,
        Reduced,
        Confirm,
        Abort,
        Peers,
        Status,
    )
}
