"""Identities: peer ids equal libp2p's, key files are written safely and loaded carefully."""

import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossiplearn.crypto.identity import (
    Identity,
    IdentityError,
    KeyFilePermissionError,
    b58decode,
    b58encode,
    load_key_file,
    peer_id_from_public_key,
    public_key_from_peer_id,
    write_key_file,
)


def test_peer_id_equals_libp2p_for_many_random_seeds():
    # libp2p is imported only here: the production path never needs it for peer ids.
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    for _ in range(300):
        seed = os.urandom(32)
        libp2p_pair = create_new_key_pair(seed)
        ours = Identity(seed)
        assert ours.public_key == libp2p_pair.public_key.to_bytes()
        assert ours.peer_id == ID.from_pubkey(libp2p_pair.public_key).to_base58()
        assert ours.peer_id.startswith("12D3KooW")


def test_known_peer_id_vector():
    # Computed once with libp2p 0.8.1 from the all-zero seed.
    assert Identity(bytes(32)).peer_id == "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"


@given(st.binary(min_size=32, max_size=32))
@settings(max_examples=300)
def test_peer_id_round_trips_to_public_key(public_key):
    assert public_key_from_peer_id(peer_id_from_public_key(public_key)) == public_key


@given(st.binary(max_size=64))
@settings(max_examples=500)
def test_base58_round_trip(data):
    assert b58decode(b58encode(data)) == data


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not-a-peer-id",
        "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",  # RSA-style (sha256 multihash) id
        "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXT0",  # '0' is not base58
        "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTNN",
    ],
)
def test_public_key_from_peer_id_refuses_other_ids(bad):
    with pytest.raises(IdentityError):
        public_key_from_peer_id(bad)


def test_public_key_must_have_32_bytes():
    with pytest.raises(IdentityError):
        peer_id_from_public_key(b"\x01" * 31)


def test_seed_must_have_32_bytes():
    with pytest.raises(IdentityError):
        Identity(b"\x00" * 31)


def test_seed_is_not_in_repr():
    identity = Identity(b"\x42" * 32)
    assert (b"\x42" * 32).hex() not in repr(identity)
    assert "42424242" not in repr(identity)


def test_key_file_round_trip_with_mode_0600(tmp_path):
    identity = Identity.generate()
    path = write_key_file(tmp_path / "identity.key", identity)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key_file(path) == identity
    assert [p.name for p in tmp_path.iterdir()] == ["identity.key"]  # no temp file left behind


def test_key_file_is_never_overwritten(tmp_path):
    path = tmp_path / "identity.key"
    first = Identity.generate()
    write_key_file(path, first)
    with pytest.raises(IdentityError, match="refusing to overwrite"):
        write_key_file(path, Identity.generate())
    assert load_key_file(path) == first


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o666, 0o601])
def test_loading_refuses_group_or_world_accessible_key_file(tmp_path, mode):
    path = write_key_file(tmp_path / "identity.key", Identity.generate())
    path.chmod(mode)
    with pytest.raises(KeyFilePermissionError, match=r"too open.*chmod 600"):
        load_key_file(path)


def test_loading_accepts_owner_read_only(tmp_path):
    identity = Identity.generate()
    path = write_key_file(tmp_path / "identity.key", identity)
    path.chmod(0o400)
    assert load_key_file(path) == identity


def test_loading_reports_missing_and_garbage_files(tmp_path):
    with pytest.raises(IdentityError, match="no identity key file"):
        load_key_file(tmp_path / "missing.key")
    garbage = tmp_path / "garbage.key"
    garbage.write_text("ed25519-seed: nothex\n")
    garbage.chmod(0o600)
    with pytest.raises(IdentityError, match="not a gossiplearn identity"):
        load_key_file(garbage)
    with pytest.raises(IdentityError, match="not a regular file"):
        load_key_file(tmp_path)


def test_signature_made_by_identity_verifies_with_libp2p():
    from libp2p.crypto.ed25519 import Ed25519PublicKey

    identity = Identity.generate()
    signature = identity.sign(b"hello")
    assert Ed25519PublicKey.from_bytes(identity.public_key).verify(b"hello", signature)
