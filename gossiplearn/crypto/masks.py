"""Pairwise additive masks: secret shares of zero across a group.

Each pair (i, j) of a group shares a 32-byte seed; mask_ij = PRG(seed, n). Member i adds
mask_ij for every j > i and subtracts it for every j < i, so the masks cancel exactly in the
ring sum over the group while each masked vector alone is uniformly random.

The PRG is libsodium's ``randombytes_buf_deterministic`` (ChaCha20, IETF variant, fixed nonce
"LibsodiumDRG"): specified output, identical on every platform and libsodium version.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# PyNaCl's binding returns a fresh bytes object (allocate, page-fault, copy); the underlying
# libsodium call writes straight into our numpy buffer, which is ~3x faster for big masks.
from nacl._sodium import ffi, lib

SEED_BYTES = 32
# libsodium caps one deterministic buffer at 2^38 bytes; we stay far below.
_MAX_PRG_BYTES = 1 << 38


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


def apply_pairwise_masks(
    vector: np.ndarray, my_index: int, seeds: Mapping[int, bytes]
) -> np.ndarray:
    """Mask ``vector`` in place: add PRG(seed_j) for j > my_index, subtract it for j < my_index.

    ``seeds`` maps every other member's index to the seed this member shares with it.
    Unsigned numpy arithmetic wraps modulo 2^bits, which is exactly the ring.
    """
    if vector.dtype.kind != "u" or not vector.flags.c_contiguous:
        raise TypeError("masks apply to a contiguous unsigned integer (ring element) array")
    if my_index in seeds:
        raise ValueError("a member shares no mask with itself")
    flat = vector.reshape(-1)
    scratch = np.empty(flat.size, dtype=flat.dtype)  # one buffer reused for every peer's mask
    for other, seed in seeds.items():
        mask = prg(seed, flat.size, flat.dtype.type, out=scratch)
        if other > my_index:
            np.add(flat, mask, out=flat)
        else:
            np.subtract(flat, mask, out=flat)
    return vector
