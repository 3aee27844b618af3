"""X25519 agreement and pair-seed derivation: symmetric, bound to group, pair and label."""

import pytest

from gossiplearn.crypto.agreement import (
    EphemeralKey,
    KeyAgreementError,
    derive_pair_seed,
    pair_seed,
    shared_secret,
)

GROUP = b"g" * 16
ID_A, ID_B, ID_C = b"a" * 32, b"b" * 32, b"c" * 32


def test_both_members_derive_the_same_seed():
    ea, eb = EphemeralKey.generate(), EphemeralKey.generate()
    seed_ab = pair_seed(ea, eb.public_key, GROUP, ID_A, ID_B, b"mask")
    seed_ba = pair_seed(eb, ea.public_key, GROUP, ID_B, ID_A, b"mask")
    assert seed_ab == seed_ba
    assert len(seed_ab) == 32


def test_seed_is_bound_to_group_members_and_label():
    secret = shared_secret(EphemeralKey.generate().private_key, EphemeralKey.generate().public_key)
    base = derive_pair_seed(secret, GROUP, ID_A, ID_B, b"mask")
    variants = {
        derive_pair_seed(secret, b"h" * 16, ID_A, ID_B, b"mask"),
        derive_pair_seed(secret, GROUP, ID_A, ID_C, b"mask"),
        derive_pair_seed(secret, GROUP, ID_A, ID_B, b"weight"),
        derive_pair_seed(b"\x01" * 32, GROUP, ID_A, ID_B, b"mask"),
    }
    assert base not in variants
    assert len(variants) == 4
    # Order-independent for the pair.
    assert base == derive_pair_seed(secret, GROUP, ID_B, ID_A, b"mask")


def test_length_prefixing_separates_shifted_fields():
    secret = b"\x07" * 32
    assert derive_pair_seed(secret, b"ab", ID_A, ID_B, b"c") != derive_pair_seed(
        secret, b"a", ID_A, ID_B, b"bc"
    )


def test_deterministic_key_generation_for_replayable_tests():
    assert EphemeralKey.generate(b"\x05" * 32) == EphemeralKey.generate(b"\x05" * 32)


@pytest.mark.parametrize("bad", [b"", b"\x01" * 31, b"\x01" * 33, "x" * 32])
def test_malformed_public_key_is_refused(bad):
    with pytest.raises(KeyAgreementError):
        shared_secret(EphemeralKey.generate().private_key, bad)


@pytest.mark.parametrize("small_order", [bytes(32), b"\x01" + bytes(31)])
def test_small_order_public_key_is_refused(small_order):
    with pytest.raises(KeyAgreementError):
        shared_secret(EphemeralKey.generate().private_key, small_order)
