"""Message bodies validate themselves; signed peer records verify and expire."""

import pytest

from gossiplearn.crypto.identity import Identity
from gossiplearn.protocol.errors import SchemaViolation
from gossiplearn.protocol.messages import (
    MAX_EVIDENCE,
    MAX_STATEMENT,
    MAX_WEIGHT,
    MESSAGE_TYPES,
    Abort,
    Accept,
    Confirm,
    Invite,
    PeerRecord,
    Peers,
    Ready,
    Roster,
)

ALICE = Identity(b"\x01" * 32)
MEMBERS = (b"a" * 32, b"b" * 32, b"c" * 32)


def test_every_type_is_registered_once():
    assert sorted(MESSAGE_TYPES) == sorted(
        [
            "INVITE",
            "ACCEPT",
            "BUSY",
            "ROSTER",
            "CANCEL",
            "READY",
            "PART",
            "REDUCED",
            "CONFIRM",
            "ABORT",
            "PEERS",
            "STATUS",
        ]
    )


def test_groups_of_two_or_repeated_members_are_impossible():
    with pytest.raises(SchemaViolation):
        Invite.from_wire(
            {
                "members": list(MEMBERS[:2]),
                "schema_hash": b"h" * 32,
                "length": 10,
                "frac_bits": 16,
                "max_weight": 1,
                "deadline_ms": 1,
            }
        )
    with pytest.raises(SchemaViolation):
        Invite(MEMBERS[:2] + (MEMBERS[0],), b"h" * 32, 10, 16, 1, 1)


def test_roster_needs_one_accept_per_member():
    with pytest.raises(SchemaViolation):
        Roster(MEMBERS, (b"x", b"y"), b"h" * 32, 10, 16, 1, 1)
    roster = Roster(MEMBERS, (b"x", b"y", b"z"), b"h" * 32, 10, 16, 1, 1)
    assert Roster.from_wire(roster.to_wire()) == roster


def test_roster_repeating_a_member_is_impossible():
    with pytest.raises(SchemaViolation):
        Roster(MEMBERS[:2] + (MEMBERS[0],), (b"x", b"y", b"z"), b"h" * 32, 10, 16, 1, 1)


def test_a_roster_carries_the_round_parameters_of_its_invite():
    wire = Roster(MEMBERS, (b"x", b"y", b"z"), b"h" * 32, 10, 16, 7, 99).to_wire()
    assert list(wire) == [
        "members",
        "accepts",
        "schema_hash",
        "length",
        "frac_bits",
        "max_weight",
        "deadline_ms",
        "ring_bits",
        "clip_exponent",
    ]
    assert (wire["ring_bits"], wire["clip_exponent"]) == (32, 19)  # the 32-bit ring; clip 8
    bad_values = (
        ("max_weight", 0),
        ("max_weight", MAX_WEIGHT + 1),
        ("frac_bits", 31),
        ("ring_bits", 24),
        ("ring_bits", 64),
        ("clip_exponent", 33),
    )
    for field, bad in bad_values:
        with pytest.raises(SchemaViolation):
            Roster.from_wire({**wire, field: bad})
    for bits in (8, 16, 32):
        assert Roster.from_wire({**wire, "ring_bits": bits}).ring_bits == bits


@pytest.mark.parametrize("weight", [0, MAX_WEIGHT + 1, -1])
def test_an_accept_declares_a_weight_in_1_to_max_weight(weight):
    wire = Accept(b"k" * 32, b"h" * 32, 1).to_wire()
    assert wire == {"ephemeral_key": b"k" * 32, "schema_hash": b"h" * 32, "weight": 1}
    assert Accept.from_wire({**wire, "weight": MAX_WEIGHT}).weight == MAX_WEIGHT
    with pytest.raises(SchemaViolation):
        Accept.from_wire({**wire, "weight": weight})
    with pytest.raises(SchemaViolation):
        Accept.from_wire({"ephemeral_key": b"k" * 32, "schema_hash": b"h" * 32})  # v2's


def test_round_statements_carry_a_32_byte_transcript():
    assert Ready.from_wire({"transcript": b"t" * 32, "roster": b"r"}) == Ready(b"t" * 32, b"r")
    with pytest.raises(SchemaViolation):
        Ready.from_wire({"transcript": b"t" * 31, "roster": b"r"})
    with pytest.raises(SchemaViolation):
        Ready.from_wire({"transcript": b"t" * 32, "roster": bytes(MAX_STATEMENT + 1)})
    confirm = {"transcript": b"t" * 32, "digest": b"d" * 32, "evidence": []}
    assert Confirm.from_wire(confirm) == Confirm(b"t" * 32, b"d" * 32, ())
    with pytest.raises(SchemaViolation):
        Confirm.from_wire({**confirm, "transcript": b""})
    with pytest.raises(SchemaViolation):
        Confirm.from_wire({**confirm, "evidence": [b"e"] * (MAX_EVIDENCE + 1)})


def test_an_abort_names_its_transcript_or_none_before_the_roster():
    for transcript in (b"", b"t" * 32):
        abort = Abort(transcript, "timeout_running")
        assert Abort.from_wire(abort.to_wire()) == abort
        assert abort.proof == abort.evidence == b""
    with pytest.raises(SchemaViolation):
        Abort.from_wire({"transcript": b"t" * 16, "reason": "x", "proof": b"", "evidence": b""})


def test_peer_record_signature_and_expiry():
    record = PeerRecord.create(ALICE, ALICE.public_key, ("/ip4/127.0.0.1/tcp/4001",), 1, 5000)
    assert record.verify(now_ms=4999)
    assert not record.verify(now_ms=5000)
    forged = PeerRecord(record.key, ("/ip4/127.0.0.1/tcp/6666",), 1, 5000, record.sig)
    assert not forged.verify(now_ms=0)
    other = PeerRecord(b"\x02" * 32, record.addrs, 1, 5000, record.sig)
    assert not other.verify(now_ms=0)


def test_peers_round_trip_through_wire_form():
    record = PeerRecord.create(ALICE, ALICE.public_key, ("/ip4/127.0.0.1/tcp/1",), 3, 9)
    peers = Peers((record,))
    assert Peers.from_wire(peers.to_wire()) == peers
