"""Statements, equivocation proofs, the backoff table and the reason registry."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from gossiplearn.crypto.identity import Identity
from gossiplearn.protocol.aggregation import part_digest
from gossiplearn.protocol.backoff import Backoff
from gossiplearn.protocol.envelope import encode_envelope, verify_envelope, verify_statement
from gossiplearn.protocol.errors import BadSignature, ProtocolError, SchemaViolation
from gossiplearn.protocol.events import (
    ABORT_REASONS,
    BUSY_REASONS,
    REFUSAL_REASONS,
    UNEXPLAINED_REASONS,
    RoundFault,
    RoundUsageError,
)
from gossiplearn.protocol.evidence import (
    EquivocationProof,
    InvalidProof,
    Proven,
    claim_of,
    describe_proof,
    verify_proof,
)
from gossiplearn.protocol.matchmaking import transcript_of
from gossiplearn.protocol.messages import Abort, Confirm, Part, Ready, Reduced, Roster
from gossiplearn.protocol.shards import DetachedShard, split_shards
from gossiplearn.protocol.states import Phase

ALICE, BOB, CAROL = (Identity(bytes([i]) * 32) for i in (1, 2, 3))
GROUP = b"\x33" * 16
NOW = 1_700_000_000_000
TRANSCRIPT = b"\x7a" * 32
OTHER_TRANSCRIPT = b"\x7b" * 32
MEMBERS = (ALICE.public_key, BOB.public_key, CAROL.public_key)


def frame(body: object, to: Identity = BOB, sender: Identity = ALICE, seq: int = 1) -> bytes:
    return encode_envelope(
        sender, sender.public_key, to.public_key, body, group=GROUP, seq=seq, ts=NOW
    )


def reduced(values: np.ndarray, digest: bytes | None = None) -> Reduced:
    (shard,) = split_shards(values.astype(np.uint32))
    return Reduced(TRANSCRIPT, 1, part_digest(values) if digest is None else digest, shard)


# ---- statements ---------------------------------------------------------------------------------


def test_a_shard_message_signs_its_digest_and_its_statement_leaves_the_data_out() -> None:
    values = np.arange(50_000, dtype=np.uint32)
    envelope = verify_envelope(frame(reduced(values)))
    assert len(envelope.statement) < 500 < 200_000 <= len(frame(reduced(values)))
    stated = verify_statement(envelope.statement)
    body = stated.body
    assert isinstance(body, Reduced) and isinstance(body.shard, DetachedShard)
    assert body.shard.data == b"" and body.shard.digest == envelope.body.shard.digest  # type: ignore[attr-defined]
    assert body.part_digest == part_digest(values)
    assert (stated.sender, stated.recipient, stated.group) == (
        ALICE.public_key,
        BOB.public_key,
        GROUP,
    )


def test_shard_data_that_does_not_match_its_signed_digest_is_refused() -> None:
    (shard,) = split_shards(np.arange(8, dtype=np.uint32))
    forged = Part(TRANSCRIPT, 0, shard.__class__(**{**shard.__dict__, "data": bytes(32)}))
    with pytest.raises(BadSignature, match="does not match its signed digest"):
        verify_envelope(frame(forged))


def test_a_statement_with_a_flipped_bit_or_its_data_back_in_is_refused() -> None:
    envelope = verify_envelope(frame(reduced(np.arange(10))))
    flipped = bytearray(envelope.statement)
    flipped[-1] ^= 1
    with pytest.raises(ProtocolError):
        verify_statement(bytes(flipped))
    with pytest.raises(ProtocolError):
        verify_statement(frame(reduced(np.arange(10))))  # a full frame is not a statement


# ---- proofs ---------------------------------------------------------------------------------------


def confirm(digest: bytes, transcript: bytes = TRANSCRIPT) -> Confirm:
    return Confirm(transcript, digest, ())


def roster(deadline_ms: int, members: tuple[bytes, ...] = MEMBERS) -> Roster:
    accepts = tuple(bytes([i]) * 40 for i in range(len(members)))
    return Roster(members, accepts, b"h" * 32, 10, 16, 1, deadline_ms)


def test_two_signed_different_confirms_prove_equivocation() -> None:
    to_bob = verify_envelope(frame(confirm(b"\x07" * 32), to=BOB, seq=1))
    to_carol = verify_envelope(frame(confirm(b"\x08" * 32), to=CAROL, seq=2))
    proof = EquivocationProof(to_bob.statement, to_carol.statement).encode()
    assert verify_proof(proof) == Proven(
        ALICE.public_key, GROUP, TRANSCRIPT, ("CONFIRM", TRANSCRIPT, 0)
    )
    described = describe_proof(proof)
    assert described["sender"] == ALICE.public_key.hex() and described["type"] == "CONFIRM"
    assert described["transcript"] == TRANSCRIPT.hex() and described["slot"] == ["CONFIRM", 0]
    assert described["recipients"] == [BOB.public_key.hex(), CAROL.public_key.hex()]
    assert described["claims"] == [(b"\x07" * 32).hex(), (b"\x08" * 32).hex()]


def test_two_reduced_parts_with_different_digests_prove_equivocation() -> None:
    a = verify_envelope(frame(reduced(np.arange(10)), to=BOB, seq=1))
    b = verify_envelope(frame(reduced(np.arange(10) + 1), to=CAROL, seq=2))
    assert claim_of(a)[0] == claim_of(b)[0] == ("REDUCED", TRANSCRIPT, 1)  # type: ignore[index]
    proven = verify_proof(EquivocationProof(a.statement, b.statement).encode())
    assert proven == Proven(ALICE.public_key, GROUP, TRANSCRIPT, ("REDUCED", TRANSCRIPT, 1))


def test_only_the_last_reduced_shard_states_the_part_and_no_other_makes_a_proof() -> None:
    # The round streams: a reducer sends each shard before the part is reduced, so only the
    # last one carries the part digest. A shard before it claims nothing, so it can never
    # "conflict" with the last shard of the same (honest) reducer's part.
    values = np.arange(40, dtype=np.uint32)
    first, *_, last = split_shards(values, max_bytes=64)
    with pytest.raises(SchemaViolation, match="last shard only"):
        Reduced(TRANSCRIPT, 1, part_digest(values), first)
    with pytest.raises(SchemaViolation, match="last shard only"):
        Reduced(TRANSCRIPT, 1, b"", last)
    early = verify_envelope(frame(Reduced(TRANSCRIPT, 1, b"", first), to=BOB, seq=1))
    final = verify_envelope(frame(Reduced(TRANSCRIPT, 1, part_digest(values), last), seq=2))
    assert claim_of(early) is None
    assert claim_of(final) == (("REDUCED", TRANSCRIPT, 1), part_digest(values))
    with pytest.raises(InvalidProof):
        verify_proof(EquivocationProof(early.statement, final.statement).encode())


def test_two_rosters_signed_for_one_group_prove_equivocation() -> None:
    # A ROSTER's slot is the group itself: its claim is the whole roster, and the proof names
    # the transcript of the first one.
    first, second = roster(NOW + 1), roster(NOW + 2)
    a = verify_envelope(frame(first, to=BOB, seq=1))
    b = verify_envelope(frame(second, to=CAROL, seq=2))
    assert claim_of(a)[0] == claim_of(b)[0] == ("ROSTER", b"", 0)  # type: ignore[index]
    proven = verify_proof(EquivocationProof(a.statement, b.statement).encode())
    assert proven == Proven(
        ALICE.public_key, GROUP, transcript_of(GROUP, first), ("ROSTER", b"", 0)
    )
    assert transcript_of(GROUP, first) != transcript_of(GROUP, second)
    # The same roster to two members is what an honest initiator sends: no proof.
    c = verify_envelope(frame(first, to=CAROL, seq=3))
    with pytest.raises(InvalidProof, match="do not conflict"):
        verify_proof(EquivocationProof(a.statement, c.statement).encode())


def test_statements_of_two_round_instances_prove_nothing() -> None:
    # Round v2 slotted a CONFIRM by its group id only: an insider that reused a group id
    # could pair an honest member's CONFIRM of an earlier round with its CONFIRM of this one,
    # a "proof" against an honest peer. Bound to the transcript, the two slots differ.
    earlier = verify_envelope(frame(confirm(b"\x07" * 32, OTHER_TRANSCRIPT), seq=1))
    now = verify_envelope(frame(confirm(b"\x08" * 32), to=CAROL, seq=2))
    proof = EquivocationProof(earlier.statement, now.statement).encode()
    with pytest.raises(InvalidProof, match="do not conflict"):
        verify_proof(proof)
    # The v2 rule, kept only to show the attack: it would have convicted ALICE.
    assert verify_proof(proof, bind_transcript=False).peer == ALICE.public_key


@pytest.mark.parametrize(
    "case",
    [
        "same_value",
        "other_sender",
        "other_group",
        "other_slot",
        "other_transcript",
        "not_slotted",
        "forged",
        "garbage",
    ],
)
def test_what_is_not_a_proof(case: str) -> None:
    first = verify_envelope(frame(confirm(b"\x07" * 32), seq=1)).statement
    second = {
        "same_value": lambda: (
            verify_envelope(frame(confirm(b"\x07" * 32), to=CAROL, seq=2)).statement
        ),
        "other_sender": lambda: (
            verify_envelope(frame(confirm(b"\x08" * 32), sender=CAROL, seq=2)).statement
        ),
        "other_group": lambda: (
            verify_envelope(
                encode_envelope(
                    ALICE,
                    ALICE.public_key,
                    BOB.public_key,
                    confirm(b"\x08" * 32),
                    group=b"\x44" * 16,
                    seq=2,
                    ts=NOW,
                )
            ).statement
        ),
        "other_slot": lambda: verify_envelope(frame(reduced(np.arange(3)), seq=2)).statement,
        "other_transcript": lambda: (
            verify_envelope(frame(confirm(b"\x08" * 32, OTHER_TRANSCRIPT), seq=2)).statement
        ),
        "not_slotted": lambda: verify_envelope(frame(Ready(TRANSCRIPT, b"r"), seq=2)).statement,
        "forged": lambda: encode_envelope(
            CAROL,
            ALICE.public_key,
            BOB.public_key,
            confirm(b"\x08" * 32),
            group=GROUP,
            seq=2,
            ts=NOW,
        ),
        "garbage": lambda: b"\x93\x01\x02",
    }[case]()
    with pytest.raises(InvalidProof):
        verify_proof(EquivocationProof(first, second).encode())
    with pytest.raises(InvalidProof):
        verify_proof(EquivocationProof(second, first).encode())


def test_ready_and_abort_are_not_slotted() -> None:
    for body in (Ready(TRANSCRIPT, b"r"), Abort(TRANSCRIPT, "timeout_running")):
        assert claim_of(verify_envelope(frame(body))) is None


def test_an_undecodable_proof_is_invalid() -> None:
    for raw in (b"", b"\xc1", b"\x93\xa1x\xc4\x00\xc4\x00", bytes(70_000)):
        with pytest.raises(InvalidProof):
            verify_proof(raw)


def test_a_proof_of_another_version_is_invalid() -> None:
    a = verify_envelope(frame(confirm(b"\x07" * 32), to=BOB, seq=1)).statement
    b = verify_envelope(frame(confirm(b"\x08" * 32), to=CAROL, seq=2)).statement
    v2 = msgpack.packb(["gossiplearn/equivocation/2", a, b], use_bin_type=True)
    with pytest.raises(InvalidProof, match="version"):
        verify_proof(v2)


# ---- backoff --------------------------------------------------------------------------------------


def test_backoff_doubles_with_each_strike_and_a_finished_round_takes_one_off() -> None:
    backoff = Backoff(base_ms=5_000, max_ms=60_000)
    peer = b"p" * 32
    assert backoff.blocked(peer, 0) is None
    assert backoff.strike(peer, 0) == 5_000
    assert backoff.blocked(peer, 4_999) == "backoff" and backoff.blocked(peer, 5_000) is None
    assert backoff.strike(peer, 5_000) == 15_000  # 10 s
    assert backoff.strike(peer, 15_000) == 35_000  # 20 s
    assert backoff.strike(peer, 35_000) == 75_000  # 40 s
    assert backoff.strike(peer, 75_000) == 135_000  # capped at 60 s
    assert backoff.snapshot(75_000)[peer] == {"strikes": 5, "backoff_s": 60.0, "refused": False}
    backoff.forgive(peer)  # one strike off; the period under way runs on
    assert backoff.snapshot(75_000)[peer] == {"strikes": 4, "backoff_s": 60.0, "refused": False}
    assert backoff.blocked(peer, 134_999) == "backoff" and backoff.blocked(peer, 135_000) is None
    assert backoff.strike(peer, 135_000) == 195_000  # the fifth strike again: 60 s
    for _ in range(5):
        backoff.forgive(peer)
    assert backoff.blocked(peer, 135_000) is None and backoff.snapshot(135_000) == {}
    assert backoff.strike(peer, 135_000) == 140_000  # a clean record: the first period


def test_a_refused_peer_stays_refused_until_cleared() -> None:
    backoff = Backoff()
    peer = b"q" * 32
    backoff.refuse(peer)
    backoff.forgive(peer)  # a finished round does not lift a refusal
    assert backoff.blocked(peer, 10**15) == "refused"
    assert backoff.clear(peer) is True and backoff.blocked(peer, 0) is None
    assert backoff.clear(peer) is False


# ---- the reason registry ---------------------------------------------------------------------------


def test_every_abort_reason_the_machine_can_build_is_registered() -> None:
    # A deadline in any phase but CLOSING is "timeout_<phase>". A CLOSING round is past its
    # deadline already: it ends at closing_grace_ms with the reason it entered CLOSING with
    # (timeout_running or peer_aborted), so "timeout_closing" is never built (test_round.py).
    built = [f"timeout_{phase.value}" for phase in Phase if phase is not Phase.CLOSING]
    built += [
        f"{prefix}_{what}{suffix}"
        for what in ("part", "reduced")
        for prefix, suffix in (
            ("bad", "_dtype"),
            ("inconsistent", "_shards"),
            ("duplicate", "_shard"),
            ("oversized", ""),
            ("bad", ""),
        )
    ]
    built += [
        f"unexpected_{kind}"
        for kind in (
            "invite",
            "accept",
            "busy",
            "cancel",
            "ready",
            "part",
            "reduced",
            "confirm",
            "roster",
        )
    ]
    built += ["bad_ready", "wrong_transcript", "bad_roster_accept", "equivocation", "disagreement"]
    assert set(built) <= set(ABORT_REASONS)
    assert (
        "bad_total_weight" not in ABORT_REASONS and "unexpected_weight_share" not in ABORT_REASONS
    )
    unexplained = set(UNEXPLAINED_REASONS)
    assert unexplained == {
        "timeout_running",
        "timeout_await_roster",
        "peer_aborted",
        "implausible_average",
    }
    assert unexplained <= set(ABORT_REASONS)
    assert "timeout_closing" not in ABORT_REASONS
    assert {"foreign_proof", "stray_abort", "bad_proof", "version", "closing"} <= set(
        REFUSAL_REASONS
    )
    assert "version_mismatch" not in BUSY_REASONS
    with pytest.raises(RoundUsageError, match="unregistered"):
        RoundFault("made_up")
