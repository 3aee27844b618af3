"""Evidence of what a member was sent, and proofs that a peer equivocated.

Some messages of a round are one value meant for every member: the ROSTER (the initiator's to
each member), a member's WEIGHT_SHARE (to each other member) and a reducer's REDUCED part (to
each member, committed by its ``part_digest``). A member that sends different values of one of
these to different members is equivocating: that is how one insider could make the others
compute different totals or averages (and, in version 1, read a member's vector).

Each such message has a *slot* (what it is about) and a *claim* (its value): two messages from
one sender in one group with the same slot must carry the same claim. Members relay the
*statements* (see :func:`~gossiplearn.protocol.envelope.verify_statement`) of the slotted
messages they received in their CONFIRM; two validly signed statements from one sender with
the same slot and different claims are an :class:`EquivocationProof` that anyone can check,
forever, without trusting whoever presents it.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from gossiplearn.protocol.envelope import DEFAULT_LIMITS, Envelope, Limits, verify_statement
from gossiplearn.protocol.errors import MalformedFrame, ProtocolError
from gossiplearn.protocol.messages import MAX_PROOF, Confirm, Reduced, Roster, WeightShare

_PROOF_DOMAIN = "gossiplearn/equivocation/1"

Slot = tuple[str, int]


def claim_of(envelope: Envelope) -> tuple[Slot, bytes] | None:
    """(slot, claim) of a message meant to be the same for every member, else None."""
    body = envelope.body
    if isinstance(body, Roster):
        return ("ROSTER", 0), msgpack.packb(body.to_wire(), use_bin_type=True)
    if isinstance(body, WeightShare):
        return ("WEIGHT_SHARE", 0), body.value.to_bytes(8, "big")
    if isinstance(body, Reduced):
        return ("REDUCED", body.part), body.part_digest
    if isinstance(body, Confirm):
        return ("CONFIRM", 0), body.digest
    return None


class InvalidProof(ProtocolError):
    """Not a proof: the statements do not verify, or do not conflict."""

    reason = "bad_proof"


@dataclass(frozen=True)
class EquivocationProof:
    """Two statements signed by one sender, for one group and slot, with different claims."""

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
            raise InvalidProof("not an equivocation proof")
        return cls(items[1], items[2])

    def verify(self, limits: Limits = DEFAULT_LIMITS) -> Envelope:
        """The first statement's envelope if this proves its sender equivocated; else raises
        :class:`InvalidProof`."""
        try:
            a = verify_statement(self.first, limits=limits)
            b = verify_statement(self.second, limits=limits)
        except (ProtocolError, MalformedFrame) as exc:
            raise InvalidProof(f"a statement does not verify: {exc}") from None
        claim_a, claim_b = claim_of(a), claim_of(b)
        if claim_a is None or claim_b is None:
            raise InvalidProof("a statement is not of a slotted message type")
        if a.sender != b.sender or a.group != b.group or a.type != b.type:
            raise InvalidProof("the statements are not from one sender, group and type")
        if claim_a[0] != claim_b[0] or claim_a[1] == claim_b[1]:
            raise InvalidProof("the statements do not conflict")
        return a


def verify_proof(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[bytes, bytes]:
    """(equivocator's public key, group id) proven by the encoded proof ``raw``; raises
    :class:`InvalidProof` otherwise."""
    envelope = EquivocationProof.decode(raw).verify(limits)
    return envelope.sender, envelope.group


def describe_proof(raw: bytes) -> dict[str, object]:
    """A verified proof, for people: who, which group, which slot, the two claims (hex)."""
    proof = EquivocationProof.decode(raw)
    a = proof.verify()
    b = verify_statement(proof.second)
    slot_a, claim_a = claim_of(a) or (("?", 0), b"")
    _, claim_b = claim_of(b) or (("?", 0), b"")
    return {
        "sender": a.sender.hex(),
        "group": a.group.hex(),
        "type": a.type,
        "slot": list(slot_a),
        "recipients": [a.recipient.hex(), b.recipient.hex()],
        "claims": [claim_a.hex()[:64], claim_b.hex()[:64]],
    }
