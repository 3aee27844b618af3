"""Statements, equivocation proofs, the backoff table and the reason registry."""

from __future__ import annotations

import numpy as np
import pytest

from gossiplearn.crypto.identity import Identity
from gossiplearn.protocol.aggregation import part_digest
from gossiplearn.protocol.backoff import Backoff
from gossiplearn.protocol.envelope import encode_envelope, verify_envelope, verify_statement
from gossiplearn.protocol.errors import BadSignature, ProtocolError
from gossiplearn.protocol.events import ABORT_REASONS, RoundFault, RoundUsageError
from gossiplearn.protocol.evidence import (
    EquivocationProof,
    InvalidProof,
    claim_of,
    describe_proof,
    verify_proof,
)
from gossiplearn.protocol.messages import Part, Reduced, WeightShare
from gossiplearn.protocol.node import Phase
from gossiplearn.protocol.shards import DetachedShard, split_shards

ALICE, BOB, CAROL = (Identity(bytes([i]) * 32) for i in (1, 2, 3))
GROUP = b"\x33" * 16
NOW = 1_700_000_000_000


def frame(body: object, to: Identity = BOB, sender: Identity = ALICE, seq: int = 1) -> bytes:
    return encode_envelope(
        sender, sender.public_key, to.public_key, body, group=GROUP, seq=seq, ts=NOW
    )


def reduced(values: np.ndarray, digest: bytes | None = None) -> Reduced:
    (shard,) = split_shards(values.astype(np.uint32))
    return Reduced(1, part_digest(values) if digest is None else digest, shard)


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
    forged = Part(0, shard.__class__(**{**shard.__dict__, "data": bytes(32)}))
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


def test_two_signed_different_weight_shares_prove_equivocation() -> None:
    to_bob = verify_envelope(frame(WeightShare(7), to=BOB, seq=1))
    to_carol = verify_envelope(frame(WeightShare(8), to=CAROL, seq=2))
    proof = EquivocationProof(to_bob.statement, to_carol.statement).encode()
    assert verify_proof(proof) == (ALICE.public_key, GROUP)
    described = describe_proof(proof)
    assert described["sender"] == ALICE.public_key.hex() and described["type"] == "WEIGHT_SHARE"


def test_two_reduced_parts_with_different_digests_prove_equivocation() -> None:
    a = verify_envelope(frame(reduced(np.arange(10)), to=BOB, seq=1))
    b = verify_envelope(frame(reduced(np.arange(10) + 1), to=CAROL, seq=2))
    assert claim_of(a)[0] == claim_of(b)[0] == ("REDUCED", 1)  # type: ignore[index]
    assert verify_proof(EquivocationProof(a.statement, b.statement).encode())[0] == ALICE.public_key


@pytest.mark.parametrize(
    "case",
    ["same_value", "other_sender", "other_group", "other_slot", "forged", "garbage"],
)
def test_what_is_not_a_proof(case: str) -> None:
    first = verify_envelope(frame(WeightShare(7), seq=1)).statement
    second = {
        "same_value": lambda: verify_envelope(frame(WeightShare(7), to=CAROL, seq=2)).statement,
        "other_sender": lambda: (
            verify_envelope(frame(WeightShare(8), sender=CAROL, seq=2)).statement
        ),
        "other_group": lambda: (
            verify_envelope(
                encode_envelope(
                    ALICE,
                    ALICE.public_key,
                    BOB.public_key,
                    WeightShare(8),
                    group=b"\x44" * 16,
                    seq=2,
                    ts=NOW,
                )
            ).statement
        ),
        "other_slot": lambda: verify_envelope(frame(reduced(np.arange(3)), seq=2)).statement,
        "forged": lambda: encode_envelope(
            CAROL, ALICE.public_key, BOB.public_key, WeightShare(8), group=GROUP, seq=2, ts=NOW
        ),
        "garbage": lambda: b"\x93\x01\x02",
    }[case]()
    with pytest.raises(InvalidProof):
        verify_proof(EquivocationProof(first, second).encode())


def test_an_undecodable_proof_is_invalid() -> None:
    for raw in (b"", b"\xc1", b"\x93\xa1x\xc4\x00\xc4\x00", bytes(70_000)):
        with pytest.raises(InvalidProof):
            verify_proof(raw)


# ---- backoff --------------------------------------------------------------------------------------


def test_backoff_doubles_with_each_strike_and_a_finished_round_forgives() -> None:
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
    backoff.forgive(peer)
    assert backoff.blocked(peer, 75_000) is None and backoff.strike(peer, 75_000) == 80_000


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
    built = [f"timeout_{phase.value}" for phase in Phase]
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
            "weight_share",
            "part",
            "reduced",
            "confirm",
            "roster",
        )
    ]
    assert set(built) <= set(ABORT_REASONS)
    with pytest.raises(RoundUsageError, match="unregistered"):
        RoundFault("made_up")
