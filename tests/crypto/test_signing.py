"""Detached Ed25519 signatures: valid ones verify, anything else is simply invalid."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossiplearn.crypto.identity import Identity
from gossiplearn.crypto.signing import sign, verify

ALICE = Identity(b"\x01" * 32)
BOB = Identity(b"\x02" * 32)


@given(st.binary(max_size=4096))
@settings(max_examples=200)
def test_sign_verify_round_trip(message):
    assert verify(ALICE.public_key, message, sign(ALICE, message))


@given(st.binary(min_size=1, max_size=256), st.data())
@settings(max_examples=300)
def test_any_bit_flip_in_message_or_signature_is_invalid(message, data):
    signature = sign(ALICE, message)
    which = data.draw(st.sampled_from(["message", "signature"]))
    target = bytearray(message if which == "message" else signature)
    bit = data.draw(st.integers(0, len(target) * 8 - 1))
    target[bit // 8] ^= 1 << (bit % 8)
    if which == "message":
        assert not verify(ALICE.public_key, bytes(target), signature)
    else:
        assert not verify(ALICE.public_key, message, bytes(target))


def test_other_key_does_not_verify():
    assert not verify(BOB.public_key, b"m", sign(ALICE, b"m"))


@pytest.mark.parametrize(
    "public_key, signature",
    [
        (b"", b"\x00" * 64),
        (b"\x00" * 31, b"\x00" * 64),
        (b"\x00" * 33, b"\x00" * 64),
        (ALICE.public_key, b""),
        (ALICE.public_key, b"\x00" * 63),
        (ALICE.public_key, b"\x00" * 65),
        (b"\x00" * 32, b"\x00" * 64),  # small-order key, all-zero signature
        (b"\xff" * 32, b"\xff" * 64),  # not a point at all
        ("a str" * 8, b"\x00" * 64),
        (ALICE.public_key, None),
    ],
)
def test_malformed_keys_and_signatures_are_invalid_not_errors(public_key, signature):
    assert verify(public_key, b"message", signature) is False
