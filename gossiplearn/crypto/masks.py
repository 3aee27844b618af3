"""Pairwise additive masks: secret shares of zero across a group.

Each pair (i, j) of a group shares a 32-byte seed; mask_ij = PRG(seed, n). Member i adds
mask_ij for every j > i and subtracts it for every j < i, so the masks cancel exactly in the
ring sum over the group while each masked vector alone is uniformly random.

The PRG is libsodium's ``randombytes_buf_deterministic`` (ChaCha20, IETF variant, fixed nonce
"LibsodiumDRG"): specified output, identical on every platform and libsodium version.
ChaCha20 is seekable (its 32-bit block counter), so :func:`prg_at` computes any range of that
same stream directly: a member masks each shard of its vector just before sending it
(the round streams), and the masks still cancel element for element.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

# PyNaCl's binding returns a fresh bytes object (allocate, page-fault, copy); the underlying
# libsodium call writes straight into our numpy buffer, which is ~3x faster for big masks.
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from nacl._sodium import ffi, lib

SEED_BYTES = 32
# libsodium caps one deterministic buffer at 2^38 bytes; we stay far below.
_MAX_PRG_BYTES = 1 << 38
#: randombytes_buf_deterministic's nonce; its ChaCha20 block counter starts at 0.
_PRG_NONCE = b"LibsodiumDRG"
_CHACHA_BLOCK = 64


def prg(
    seed: bytes,
    count: int,
    dtype: type[np.unsignedinteger] = np.uint32,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``count`` little-endian ring elements from ``seed``, written into ``out`` if given."""
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise ValueError("a PRG seed has 32 bytes")
    if count < 0:
        raise ValueError("count must be >= 0")
    wire = np.dtype(dtype).newbyteorder("<")
    if count * wire.itemsize > _MAX_PRG_BYTES:
        raise ValueError("PRG request too large")
    if out is None:
        out = np.empty(count, dtype=wire)
    elif out.dtype != wire or out.size != count or not out.flags.c_contiguous:
        raise ValueError("out must be a contiguous array of count elements of the ring dtype")
    if count:
        lib.randombytes_buf_deterministic(ffi.from_buffer(out), count * wire.itemsize, seed)
    return out


def prg_at(
    seed: bytes,
    offset: int,
    count: int,
    dtype: type[np.unsignedinteger] = np.uint32,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Elements ``[offset, offset + count)`` of ``prg(seed, n, dtype)`` for any n beyond them,
    without generating the ones before: the same ChaCha20 stream (OpenSSL's, through
    ``cryptography``) started at the block that holds element ``offset``."""
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise ValueError("a PRG seed has 32 bytes")
    if offset < 0 or count < 0:
        raise ValueError("offset and count must be >= 0")
    wire = np.dtype(dtype).newbyteorder("<")
    first = offset * wire.itemsize
    if first + count * wire.itemsize > _MAX_PRG_BYTES:
        raise ValueError("PRG request too large")
    if out is None:
        out = np.empty(count, dtype=wire)
    elif out.dtype != wire or out.size != count or not out.flags.c_contiguous:
        raise ValueError("out must be a contiguous array of count elements of the ring dtype")
    if not count:
        return out
    block, skip = divmod(first, _CHACHA_BLOCK)
    raw = out.view(np.uint8)
    head = 0
    if skip:  # the stream starts inside a block: its tail, then whole blocks
        partial = bytearray(_CHACHA_BLOCK)
        _keystream(seed, block).update_into(partial, partial)
        head = min(_CHACHA_BLOCK - skip, raw.size)
        raw[:head] = np.frombuffer(partial, dtype=np.uint8)[skip : skip + head]
        block += 1
    if head < raw.size:
        # Keystream = ChaCha20 of zeros, written in place into ``out`` (no temporary).
        rest = raw[head:]
        rest.fill(0)
        _keystream(seed, block).update_into(rest.data, rest.data)
    return out


def _keystream(seed: bytes, block: int) -> Any:
    """ChaCha20 (IETF) under ``seed`` from block ``block``: the counter is little-endian
    before randombytes_buf_deterministic's 96-bit nonce."""
    nonce = block.to_bytes(4, "little") + _PRG_NONCE
    return Cipher(algorithms.ChaCha20(seed, nonce), None).encryptor()


def apply_pairwise_masks(
    vector: np.ndarray, my_index: int, seeds: Mapping[int, bytes], offset: int = 0
) -> np.ndarray:
    """Mask ``vector`` in place: add PRG(seed_j) for j > my_index, subtract it for j < my_index.

    ``seeds`` maps every other member's index to the seed this member shares with it.
    ``offset``: ``vector`` is the slice of the whole vector that starts at this element (its
    masks are that slice of the masks). Unsigned numpy arithmetic wraps modulo 2^bits, which
    is exactly the ring.
    """
    if vector.dtype.kind != "u" or not vector.flags.c_contiguous:
        raise TypeError("masks apply to a contiguous unsigned integer (ring element) array")
    if my_index in seeds:
        raise ValueError("a member shares no mask with itself")
    flat = vector.reshape(-1)
    scratch = np.empty(flat.size, dtype=flat.dtype)  # one buffer reused for every peer's mask
    for other, seed in seeds.items():
        # OpenSSL's ChaCha20 (AVX2) generates these ~3x faster than libsodium's deterministic
        # buffer on the reference machine: the same stream either way (test_masks).
        mask = prg_at(seed, offset, flat.size, flat.dtype.type, out=scratch)
        if other > my_index:
            np.add(flat, mask, out=flat)
        else:
            np.subtract(flat, mask, out=flat)
    return vector
