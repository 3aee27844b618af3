"""Message bodies validate themselves; signed peer records verify and expire."""

import pytest

from gossiplearn.crypto.identity import Identity
from gossiplearn.protocol.errors import SchemaViolation
from gossiplearn.protocol.messages import (
    MESSAGE_TYPES,
    Invite,
    PeerRecord,
    Peers,
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
            "WEIGHT_SHARE",
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
        Roster(MEMBERS, (b"x", b"y"), 1)


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
