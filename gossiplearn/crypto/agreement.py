"""X25519 ephemeral key agreement and BLAKE2b key derivation for pairwise mask seeds.

Each member of a group makes a fresh X25519 key pair for that group only. A pair (i, j) derives
its mask seed from X25519(e_i, E_j) bound to the group id, both members' long-term ids and a
label, so a seed from one group, pair or purpose is useless in any other. The two members
compute the same seed whichever of them is "first".
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import nacl.bindings

X25519_KEY_BYTES = 32
SEED_BYTES = 32
_PERSON = b"gossiplearn.kdf1"  # BLAKE2b personalization: 16 bytes, domain-separates our hashes


class KeyAgreementError(ValueError):
    """A peer's ephemeral key is malformed or of small order (the shared secret is all zero)."""


@dataclass(frozen=True)
class EphemeralKey:
    """A one-group X25519 key pair."""

    private_key: bytes = field(repr=False)
    public_key: bytes

    @classmethod
    def generate(cls, random_bytes: bytes | None = None) -> EphemeralKey:
        """A fresh key pair; ``random_bytes`` (32) makes it deterministic for replayable tests."""
        private = os.urandom(X25519_KEY_BYTES) if random_bytes is None else random_bytes
        if len(private) != X25519_KEY_BYTES:
            raise KeyAgreementError("an X25519 private key has 32 bytes")
        return cls(private, nacl.bindings.crypto_scalarmult_base(private))


def shared_secret(private_key: bytes, peer_public_key: bytes) -> bytes:
    """X25519(private, peer public); refuses small-order peer keys."""
    if not isinstance(peer_public_key, bytes) or len(peer_public_key) != X25519_KEY_BYTES:
        raise KeyAgreementError("an X25519 public key has 32 bytes")
    try:
        secret = nacl.bindings.crypto_scalarmult(private_key, peer_public_key)
    except Exception as exc:  # libsodium refuses some small-order points itself
        raise KeyAgreementError(f"unusable X25519 public key: {exc}") from None
    if secret == bytes(X25519_KEY_BYTES):
        raise KeyAgreementError("X25519 public key of small order")
    return secret


def derive_pair_seed(
    secret: bytes, group_id: bytes, member_a: bytes, member_b: bytes, label: bytes
) -> bytes:
    """A 32-byte seed bound to the group, the unordered pair {a, b} and a label.

    Every variable-length field is length-prefixed so no two different inputs hash alike.
    """
    low, high = sorted((member_a, member_b))
    digest = hashlib.blake2b(key=secret, digest_size=SEED_BYTES, person=_PERSON)
    for part in (label, group_id, low, high):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    return digest.digest()


def pair_seed(
    my_ephemeral: EphemeralKey,
    peer_ephemeral_public: bytes,
    group_id: bytes,
    my_id: bytes,
    peer_id: bytes,
    label: bytes,
) -> bytes:
    """The seed this member shares with one peer for one group and purpose."""
    secret = shared_secret(my_ephemeral.private_key, peer_ephemeral_public)
    return derive_pair_seed(secret, group_id, my_id, peer_id, label)
