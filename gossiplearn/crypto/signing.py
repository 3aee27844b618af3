"""Detached Ed25519 signatures: signing by an :class:`Identity`, verifying by public key."""

from __future__ import annotations

from typing import Protocol

import nacl.bindings
import nacl.exceptions

SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32


class Signer(Protocol):
    def sign(self, message: bytes) -> bytes: ...


def sign(signer: Signer, message: bytes) -> bytes:
    """A detached 64-byte signature of ``message`` by ``signer`` (an Identity)."""
    return signer.sign(message)


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``message`` by ``public_key``.

    Never raises on malformed input: wrong sizes, non-canonical or small-order keys are simply
    not valid signatures.
    """
    if type(public_key) is not bytes or len(public_key) != PUBLIC_KEY_BYTES:
        return False
    if type(signature) is not bytes or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        # PyNaCl exposes only the combined form; the extra copy of the message is cheap next
        # to the SHA-512 pass verification makes over it anyway.
        nacl.bindings.crypto_sign_open(signature + bytes(message), public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True
