"""The live fuzzer's forge (gossiplearn/testing/scenarios/fuzz.py), without a network: it speaks
protocol v3, so its valid envelopes decode, and each of its broken kinds is refused for the
reason it is there to provoke (tests/peer/net/test_live_fuzz.py sends them to a live daemon)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gossiplearn.crypto.identity import Identity
from gossiplearn.protocol import (
    VERSION,
    ProtocolError,
    ReplayGuard,
    decode_envelope,
    verify_statement,
)
from gossiplearn.protocol.messages import RING_BITS, Abort, Ready, Roster
from gossiplearn.testing.scenarios.fuzz import Forge
from gossiplearn.testing.scenarios.live import now_ms

VICTIM, FUZZER, ACCOMPLICE = (Identity(bytes([i]) * 32) for i in (1, 2, 3))
IN_ROUND = {"READY", "PART", "REDUCED", "ROSTER", "ACCEPT", "ABORT", "CONFIRM", "CANCEL", "BUSY"}
DRAWS = 400


@pytest.fixture
def forge() -> Forge:
    return Forge(random.Random(7), VICTIM.public_key, FUZZER, ACCOMPLICE)


def refusal(frame: bytes) -> str:
    """The reason the victim's decoder refuses ``frame`` ("accepted" if it does not)."""
    try:
        decode_envelope(frame, recipient=VICTIM.public_key, now_ms=now_ms(), replay=ReplayGuard())
    except ProtocolError as exc:
        return exc.reason
    return "accepted"


def test_valid_envelopes_cover_every_in_round_type_of_v3_and_decode(forge: Forge) -> None:
    kinds: Counter[str] = Counter()
    aborts, readies = [], []
    for _ in range(DRAWS):
        frame = forge.envelope(forge.round)
        envelope = decode_envelope(
            frame, recipient=VICTIM.public_key, now_ms=now_ms(), replay=ReplayGuard()
        )
        assert envelope.sender == FUZZER.public_key and len(envelope.group) == 16
        kinds[envelope.type] += 1
        if isinstance(envelope.body, Abort):
            aborts.append(envelope.body)
        elif isinstance(envelope.body, Ready):
            readies.append(envelope.body)
    assert set(kinds) == IN_ROUND, kinds
    # The fields v3 added are exercised: ABORTs with proofs, evidence and accused members
    # (and without a transcript), READYs relaying a signed ROSTER.
    assert any(a.proof for a in aborts) and any(not a.proof for a in aborts)
    assert any(a.evidence for a in aborts) and any(a.accused for a in aborts)
    assert any(not a.transcript for a in aborts)
    assert any(refusal(r.roster) == "accepted" for r in readies)
    assert any(refusal(r.roster) != "accepted" for r in readies)  # ... or noise
    roster = verify_statement(next(r.roster for r in readies if refusal(r.roster) == "accepted"))
    assert isinstance(roster.body, Roster) and roster.sender == FUZZER.public_key
    # ROSTERs carry the round's parameters, its ring among them (32, 16 or 8 bits).
    assert {forge.roster_body().ring_bits for _ in range(60)} == set(RING_BITS)


def test_schema_breaking_bodies_are_refused_as_schema(forge: Forge) -> None:
    reasons = Counter(refusal(forge.bad_body(forge.round)) for _ in range(DRAWS))
    assert reasons == {"schema": DRAWS}


def test_other_versions_and_unknown_types_are_refused(forge: Forge) -> None:
    assert {refusal(forge.bad_version(forge.round)) for _ in range(40)} == {"version"}
    assert {refusal(forge.unknown_type(forge.round)) for _ in range(40)} == {"schema"}
    frame = forge.envelope(forge.round, v=VERSION - 1)  # a round v2 peer
    assert refusal(frame) == "version"


def test_malformed_invites_are_never_valid_for_the_victim(forge: Forge) -> None:
    # Refused by the decoder (schema) or by the round machine's own checks (bad_invite...):
    # the live test counts those; here, none is a well-formed invitation of the victim alone.
    reasons = Counter(refusal(forge.malformed_invite(forge.round)) for _ in range(DRAWS))
    assert set(reasons) <= {"schema", "accepted"}, reasons
    assert reasons["schema"] > 0 and reasons["accepted"] > 0
