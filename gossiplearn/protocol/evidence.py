"""Evidence of what a member was sent, and proofs that a peer equivocated.

Some messages of a round are one value meant for every member: the initiator's ROSTER, a
reducer's REDUCED part (committed by the ``part_digest`` of its last shard) and a member's CONFIRM (its digest
of the result). A member that sends different values of one of these to different members is
equivocating: that is how one insider could make the others compute different averages, or
mask them so that they add up instead of cancelling.

Each such message has a *slot* (what it is about) and a *claim* (its value): two messages from
one sender with the same slot must carry the same claim. Members relay the *statements* (see
:func:`~gossiplearn.protocol.envelope.verify_statement`) of what they received (READY relays
the ROSTER, CONFIRM the REDUCED headers, ABORT a disagreeing CONFIRM); two validly signed
statements from one sender with the same slot and different claims are an
:class:`EquivocationProof` that anyone can check, forever, without trusting whoever presents
it.

**A slot names one round instance**, never just a group id: REDUCED and CONFIRM slots include
the round's transcript (matchmaking.transcript_of), which covers every member's ephemeral key,
and a ROSTER's claim is the whole roster (the initiator's own ephemeral key included) under
the group id the initiator drew at random. An honest peer makes a fresh ephemeral key for
every round it joins and signs one claim per slot in it, so no two statements of an honest
peer ever share a slot with different claims: no proof against an honest peer can exist
(docs/protocol.md gives the argument in full). In round v2 slots named only the group id:
an insider that reused an old group id relayed a member's statement from the earlier round
as a "proof" against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from gossiplearn.protocol.envelope import DEFAULT_LIMITS, Envelope, Limits, verify_statement
from gossiplearn.protocol.errors import MalformedFrame, ProtocolError
from gossiplearn.protocol.messages import MAX_PROOF, Confirm, Reduced, Roster

_PROOF_DOMAIN = "gossiplearn/equivocation/3"

#: (message type, transcript or b"" for a ROSTER, index): what a claim is about.
Slot = tuple[str, bytes, int]


def claim_of(envelope: Envelope, *, bind_transcript: bool = True) -> tuple[Slot, bytes] | None:
    """(slot, claim) of a message meant to be the same for every member, else None.

    ``bind_transcript=False`` is round v2's rule (slots by group id only), for the test that
    shows the framing attack it allowed; nothing else passes it.
    """
    body = envelope.body
    if isinstance(body, Roster):
        return ("ROSTER", b"", 0), msgpack.packb(body.to_wire(), use_bin_type=True)
    if isinstance(body, Reduced):
        if not body.final:  # a shard before the last commits to no part digest
            return None
        bound = body.transcript if bind_transcript else b""
        return ("REDUCED", bound, body.part), body.part_digest
    if isinstance(body, Confirm):
        bound = body.transcript if bind_transcript else b""
        return ("CONFIRM", bound, 0), body.digest
    return None


class InvalidProof(ProtocolError):
    """Not a proof: the statements do not verify, or do not conflict."""

    reason = "bad_proof"


@dataclass(frozen=True)
class Proven:
    """What a verified proof shows: ``peer`` equivocated in ``group`` (round ``transcript``;
    for a ROSTER, the transcript of the first statement's roster)."""

    peer: bytes
    group: bytes
    transcript: bytes
    slot: Slot


@dataclass(frozen=True)
class EquivocationProof:
    """Two statements signed by one sender, for one slot, with different claims."""

    first: bytes
    second: bytes

    def encode(self) -> bytes:
        return msgpack.packb([_PROOF_DOMAIN, self.first, self.second], use_bin_type=True)

    @classmethod
    def decode(cls, raw: bytes) -> EquivocationProof:
        if not isinstance(raw, bytes) or len(raw) > MAX_PROOF:
            raise InvalidProof("not a proof: wrong type or too large")
        try:
            items = msgpack.unpackb(raw, raw=False, max_bin_len=MAX_PROOF, max_array_len=3)
        except Exception as exc:
            raise InvalidProof(f"undecodable: {type(exc).__name__}") from None
        if (
            type(items) is not list
            or len(items) != 3
            or items[0] != _PROOF_DOMAIN
            or not all(type(item) is bytes for item in items[1:])
        ):
            raise InvalidProof("not an equivocation proof of this protocol version")
        return cls(items[1], items[2])

    def verify(self, limits: Limits = DEFAULT_LIMITS, *, bind_transcript: bool = True) -> Proven:
        """What this proves; raises :class:`InvalidProof` if it proves nothing."""
        try:
            a = verify_statement(self.first, limits=limits)
            b = verify_statement(self.second, limits=limits)
        except (ProtocolError, MalformedFrame) as exc:
            raise InvalidProof(f"a statement does not verify: {exc}") from None
        claim_a = claim_of(a, bind_transcript=bind_transcript)
        claim_b = claim_of(b, bind_transcript=bind_transcript)
        if claim_a is None or claim_b is None:
            raise InvalidProof("a statement is not of a slotted message type")
        if a.sender != b.sender or a.group != b.group or a.type != b.type:
            raise InvalidProof("the statements are not from one sender, group and type")
        if claim_a[0] != claim_b[0] or claim_a[1] == claim_b[1]:
            raise InvalidProof("the statements do not conflict")
        slot = claim_a[0]
        return Proven(a.sender, a.group, transcript_of_statement(a), slot)


def transcript_of_statement(envelope: Envelope) -> bytes:
    """The round transcript a slotted statement belongs to."""
    body = envelope.body
    if isinstance(body, Roster):
        from gossiplearn.protocol.matchmaking import transcript_of  # matchmaking imports us

        return transcript_of(envelope.group, body)
    return getattr(body, "transcript", b"")


def verify_proof(
    raw: bytes, limits: Limits = DEFAULT_LIMITS, *, bind_transcript: bool = True
) -> Proven:
    """What the encoded proof ``raw`` proves; raises :class:`InvalidProof` otherwise."""
    return EquivocationProof.decode(raw).verify(limits, bind_transcript=bind_transcript)


def describe_proof(raw: bytes) -> dict[str, object]:
    """A verified proof, for people: who, which group and round, which slot, the two claims
    (hex)."""
    proof = EquivocationProof.decode(raw)
    proven = proof.verify()
    a = verify_statement(proof.first)
    b = verify_statement(proof.second)
    _, claim_a = claim_of(a) or (("?", b"", 0), b"")
    _, claim_b = claim_of(b) or (("?", b"", 0), b"")
    kind, _, index = proven.slot
    return {
        "sender": proven.peer.hex(),
        "group": proven.group.hex(),
        "transcript": proven.transcript.hex(),
        "type": a.type,
        "slot": [kind, index],
        "recipients": [a.recipient.hex(), b.recipient.hex()],
        "claims": [claim_a.hex()[:64], claim_b.hex()[:64]],
    }
