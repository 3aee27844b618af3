"""Matchmaking: INVITE -> ACCEPT/BUSY -> ROSTER (or CANCEL) -> a verified group.

The initiator invites up to k-1 live neighbours (:func:`propose`); each idle one with the same
parameters answers ACCEPT with a fresh X25519 key for this group only and its weight, signed
by its identity (:func:`busy_reason` says why it would not); the initiator collects the
answers (:class:`Invitation`) and, with at least 3 members, sends every member the ROSTER:
the ordered members with each one's signed ACCEPT frame and the round's parameters. Each
member checks every ACCEPT itself (:func:`verify_roster`), so the initiator cannot substitute
an ephemeral key or a weight. What comes out is a :class:`VerifiedGroup`: members, ephemeral
keys, weights, the roster and its **transcript** (:func:`transcript_of`), the id of this one
round instance. Members then agree on the transcript (READY, aggregation.py) before any masked
data moves; pair seeds, mask signs and every later statement are bound to it.

Pure functions and small state holders: no I/O, no clock, no randomness of their own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Container, Sequence
from dataclasses import dataclass, field

import msgpack

from gossiplearn.protocol.envelope import GROUP_ID_BYTES, Envelope, Limits, verify_envelope
from gossiplearn.protocol.errors import ProtocolError
from gossiplearn.protocol.events import RoundFault
from gossiplearn.protocol.messages import MIN_GROUP, TRANSCRIPT_BYTES, Accept, Invite, Roster

_TRANSCRIPT_PERSON = b"gossiplearn.trs3"


def transcript_of(group_id: bytes, roster: Roster) -> bytes:
    """The id of one round instance: BLAKE2b-256 over the group id and the whole ROSTER (the
    ordered members, their signed ACCEPTs with every ephemeral key and weight, the parameters
    and the deadline). Two members with the same transcript hold the same roster; an honest
    member's fresh ephemeral key in it makes it unique to one round of that member."""
    content = msgpack.packb([group_id, roster.to_wire()], use_bin_type=True)
    return hashlib.blake2b(
        content, digest_size=TRANSCRIPT_BYTES, person=_TRANSCRIPT_PERSON
    ).digest()


@dataclass(frozen=True)
class RoundParams:
    """What every member of a group must share, fixed by the INVITE."""

    schema_hash: bytes
    length: int
    frac_bits: int
    max_weight: int
    #: The ring of the secure sum (32, 16 or 8 bits) and, for a narrow one, its clip as
    #: 2^(clip_exponent - 16) (see crypto/narrow.py).
    ring_bits: int = 32
    clip_exponent: int = 19

    @classmethod
    def of(cls, invite: Invite | Roster) -> RoundParams:
        return cls(
            invite.schema_hash,
            invite.length,
            invite.frac_bits,
            invite.max_weight,
            invite.ring_bits,
            invite.clip_exponent,
        )

    @property
    def shared(self) -> tuple[int, int, int, int]:
        """The settings every member of a network must share (the rest is the model's)."""
        return (self.frac_bits, self.max_weight, self.ring_bits, self.clip_exponent)


@dataclass(frozen=True)
class VerifiedGroup:
    """A group whose roster this member checked: the round can start."""

    id: bytes
    members: tuple[bytes, ...]  # initiator first
    ephemeral_keys: tuple[bytes, ...]  # members[i]'s key for this group
    weights: tuple[int, ...]  # members[i]'s declared weight, each in [1, max_weight]
    roster: Roster
    #: The ROSTER as this member received it (a statement, relayed in READY); empty for the
    #: initiator, which built it.
    roster_statement: bytes
    params: RoundParams
    transcript: bytes

    @classmethod
    def build(
        cls,
        group_id: bytes,
        roster: Roster,
        keys: Sequence[bytes],
        weights: Sequence[int],
        roster_statement: bytes,
    ) -> VerifiedGroup:
        return cls(
            group_id,
            roster.members,
            tuple(keys),
            tuple(weights),
            roster,
            roster_statement,
            RoundParams.of(roster),
            transcript_of(group_id, roster),
        )


def propose(
    initiator: bytes,
    invitees: Sequence[bytes],
    params: RoundParams,
    deadline_ms: int,
) -> Invite:
    """The INVITE an initiator sends each of ``invitees``."""
    return Invite(
        members=(initiator, *invitees),
        schema_hash=params.schema_hash,
        length=params.length,
        frac_bits=params.frac_bits,
        ring_bits=params.ring_bits,
        clip_exponent=params.clip_exponent,
        max_weight=params.max_weight,
        deadline_ms=deadline_ms,
    )


def invite_refusal(
    envelope: Envelope,
    me: bytes,
    now_ms: int,
    max_round_ms: int,
    admitted: Container[bytes] | None,
) -> str | None:
    """Why an INVITE is malformed for us (refused silently, no BUSY), or None."""
    invite = envelope.body
    assert isinstance(invite, Invite)
    if len(envelope.group) != GROUP_ID_BYTES:
        return "bad_invite"
    if invite.members[0] != envelope.sender or me not in invite.members[1:]:
        return "bad_invite"
    if not now_ms < invite.deadline_ms <= now_ms + max_round_ms:
        return "bad_invite_deadline"
    if admitted is not None and any(m not in admitted for m in invite.members if m != me):
        return "not_admitted_member"
    return None


def busy_reason(invite: Invite, mine: RoundParams | None, max_group_size: int) -> str | None:
    """Why an idle peer whose next contribution has parameters ``mine`` declines, or None."""
    if mine is None:
        return "not_ready"
    if invite.schema_hash != mine.schema_hash or invite.length != mine.length:
        return "schema_mismatch"
    if RoundParams.of(invite).shared != mine.shared:
        return "params_mismatch"
    if len(invite.members) > max_group_size:
        return "group_too_large"
    return None


@dataclass
class Invitation:
    """The initiator's side until the roster closes: who accepted, who declined."""

    invitees: tuple[bytes, ...]
    schema_hash: bytes
    #: ACCEPTs declaring more than this are refused (None: round v2's unchecked weights, for
    #: the test that shows the attack).
    max_weight: int | None
    accepts: dict[bytes, tuple[bytes, Accept]] = field(default_factory=dict)  # frame, body
    declined: set[bytes] = field(default_factory=set)

    @property
    def answered(self) -> bool:
        return len(self.accepts) + len(self.declined) == len(self.invitees)

    def answer(self, sender: bytes, body: object, frame: bytes | None) -> bool:
        """An invitee's ACCEPT (kept with its frame, for the roster) or decline. A second
        answer changes nothing. False if the answer broke the rules (an ACCEPT of another
        schema or over the weight cap: its signer is to blame)."""
        if sender in self.accepts or sender in self.declined:
            return True
        if not isinstance(body, Accept) or not frame:
            self.declined.add(sender)
            return True
        if body.schema_hash != self.schema_hash or (
            self.max_weight is not None and body.weight > self.max_weight
        ):
            self.declined.add(sender)
            return False
        self.accepts[sender] = (frame, body)
        return True

    def unreachable(self, peer: bytes) -> None:
        """An invitee the transport cannot reach counts as having declined."""
        if peer in self.invitees and peer not in self.declined:
            self.accepts.pop(peer, None)
            self.declined.add(peer)

    def accepted(self) -> list[bytes]:
        return [peer for peer in self.invitees if peer in self.accepts]

    def too_few(self) -> bool:
        return 1 + len(self.accepted()) < MIN_GROUP

    def to_release(self, cancelling: bool) -> list[bytes]:
        """Invitees to send CANCEL when the roster closes: those whose answer may still be in
        flight, and (when cancelling) those who accepted and hold state for the group."""
        return [
            peer
            for peer in self.invitees
            if (peer not in self.accepts and peer not in self.declined)
            or (cancelling and peer in self.accepts)
        ]

    def roster(
        self, initiator: bytes, my_accept_frame: bytes, params: RoundParams, deadline_ms: int
    ) -> Roster:
        accepted = self.accepted()
        return Roster(
            members=(initiator, *accepted),
            accepts=(my_accept_frame, *(self.accepts[p][0] for p in accepted)),
            schema_hash=params.schema_hash,
            length=params.length,
            frac_bits=params.frac_bits,
            ring_bits=params.ring_bits,
            clip_exponent=params.clip_exponent,
            max_weight=params.max_weight,
            deadline_ms=deadline_ms,
        )

    def ephemeral_keys(self, my_key: bytes) -> tuple[bytes, ...]:
        return (my_key, *(self.accepts[p][1].ephemeral_key for p in self.accepted()))

    def weights(self, my_weight: int) -> tuple[int, ...]:
        return (my_weight, *(self.accepts[p][1].weight for p in self.accepted()))


def verify_roster(
    envelope: Envelope,
    *,
    group_id: bytes,
    me: bytes,
    initiator: bytes,
    invite: Invite,
    my_accept_frame: bytes,
    my_ephemeral_key: bytes,
    my_weight: int,
    limits: Limits,
    admitted: Container[bytes] | None,
    check_weights: bool = True,
) -> VerifiedGroup:
    """Check a ROSTER as a member; raises :class:`RoundFault` (blaming the initiator, who
    signed it: every check here is of its content)."""
    roster = envelope.body
    assert isinstance(roster, Roster)
    blamed = (initiator,)
    members = roster.members
    if members[0] != initiator or me not in members:
        raise RoundFault("bad_roster", blamed)
    if not set(members) <= set(invite.members):
        raise RoundFault("bad_roster", blamed)
    if RoundParams.of(roster) != RoundParams.of(invite):
        raise RoundFault("bad_roster", blamed)
    keys = []
    weights = []
    for i, (member, frame) in enumerate(zip(members, roster.accepts, strict=True)):
        if member == me:
            if frame != my_accept_frame:
                raise RoundFault("roster_altered_my_accept", blamed)
            keys.append(my_ephemeral_key)
            weights.append(my_weight)
            continue
        try:
            accept = verify_envelope(frame, limits=limits, admitted=admitted)
        except ProtocolError:
            raise RoundFault("bad_roster_accept", blamed) from None
        body = accept.body
        if (
            not isinstance(body, Accept)
            or accept.sender != member
            or accept.recipient != initiator
            or accept.group != group_id
            or body.schema_hash != invite.schema_hash
            or (check_weights and body.weight > invite.max_weight)
            or (i == 0 and accept.sender != initiator)
        ):
            raise RoundFault("bad_roster_accept", blamed)
        keys.append(body.ephemeral_key)
        weights.append(body.weight)
    return VerifiedGroup.build(group_id, roster, keys, weights, envelope.statement)
