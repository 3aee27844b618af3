"""Narrow rings for the secure sum: Z/2^16 and Z/2^8, with stochastic rounding and a scale
fixed so that the group's sum can never wrap.

The 32-bit ring encodes round(x 2^f) with f = 20 fractional bits: 4 bytes an element. Model
averaging needs far less resolution than that, so a group may agree on a narrower ring (half
or a quarter of the bytes on the wire). Then, for a group of m members, ring bits b and a
clip C (a power of two, agreed in the round's parameters like b):

    L = 2^(b-1) - 1 - m         (the largest magnitude one full share may take)
    s = C / L                    (the value of one ring unit)
    v_i = SR(a_i * clip(x_i, -C, C) / s)

where a_i = w_i / W is member i's share of the weight (the shares sum to 1) and SR rounds
stochastically: up with probability equal to the fraction (resolved to 2^-8 of a unit), so
E[v_i] is exact within 2^-9 of a unit and the rounding error of the average is zero-mean to
that resolution (at most one unit per member). Overflow is
impossible by construction: |a_i x_i / s| <= a_i L, rounding adds less than 1, so
|sum v_i| <= L + m - 1 < 2^(b-1): the masked sum always decodes to sum a_i clip(x_i), up to
the rounding, never wrapped. Masks are uniform in Z/2^b and cancel exactly as in any ring.

Every member derives L and s from the same integers (b, m, log2 C), so all compute the same
scale bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

#: Ring widths a group may agree on, and their wire dtypes.
NARROW_BITS = (8, 16)
_UNSIGNED: dict[int, type[np.unsignedinteger]] = {8: np.uint8, 16: np.uint16, 32: np.uint32}
_SIGNED: dict[int, type[np.signedinteger]] = {8: np.int8, 16: np.int16, 32: np.int32}
#: Elements rounded per block (no full-size float64 temporaries, as in ring.encode).
_BLOCK = 1 << 16
#: Stochastic rounding's grid: 2^8 steps a unit, one coin byte an element.
_COIN_LEVELS = 256
_INVERSE_COIN_LEVELS = np.float32(1 / _COIN_LEVELS)


@dataclass(frozen=True)
class NarrowRing:
    """Z/2^bits for a group of ``members`` with clip 2^``clip_log2``."""

    bits: int
    members: int
    clip_log2: int

    def __post_init__(self) -> None:
        if self.bits not in NARROW_BITS:
            raise ValueError(f"a narrow ring has {' or '.join(map(str, NARROW_BITS))} bits")
        if not 1 <= self.members < 2 ** (self.bits - 2):
            raise ValueError("too many members for this ring: no room left for a share")
        if not -16 <= self.clip_log2 <= 16:
            raise ValueError("clip_log2 must be in [-16, 16]")

    @property
    def unsigned(self) -> type[np.unsignedinteger]:
        return _UNSIGNED[self.bits]

    @property
    def signed(self) -> type[np.signedinteger]:
        return _SIGNED[self.bits]

    @property
    def clip(self) -> float:
        return 2.0**self.clip_log2

    @property
    def full_share(self) -> int:
        """L: the largest magnitude of a member whose share is all of the weight."""
        return (1 << (self.bits - 1)) - 1 - self.members

    @property
    def unit(self) -> float:
        """s: the value of one ring unit."""
        return self.clip / self.full_share

    def encode(
        self, x: np.ndarray, share: float, rounding: np.random.Generator
    ) -> tuple[np.ndarray, int]:
        """``share * clip(x)`` in ring units, stochastically rounded; returns (ring elements,
        how many values were clipped or not finite).

        v' = share * clip(x) / s is first put on a grid of 2^-8 units, k = rint(256 v'), then
        rounded to floor((k + c) / 256) with a coin c uniform in {0, ..., 255}: up with
        probability (k mod 256) / 256, so the expectation is k / 256, within 2^-9 of a unit of
        v' (float32 resolves 2^-8 of a unit for values up to 2^15 units: no finer grid would be
        seen). The result is always floor(v') or ceil(v') (k is within 1/2 of 256 v', and
        256 floor(v') <= k <= 256 ceil(v') as both ends are integers), so the bound that makes
        a wrapped sum impossible holds as stated above. Every step is exact in float32 (|k| <=
        2^23, |k + c| < 2^24, and scaling by 2^-8 is exact). The coins come from AES-128-CTR
        under a key drawn from ``rounding``: one byte an element, at memory speed (numpy's
        float32 draws took half of this function's time).
        """
        if not 0.0 < share <= 1.0:
            raise ValueError("a share of the weight is in (0, 1]")
        flat = np.asarray(x).reshape(-1)
        out = np.empty(flat.size, dtype=self.signed)
        factor = np.float32(share / self.unit * _COIN_LEVELS)  # times 2^8: exact
        clip = np.float32(self.clip)
        clipped = 0
        size = min(_BLOCK, flat.size)
        values = np.empty(size, dtype=np.float32)
        coins = np.zeros(size, dtype=np.uint8)
        keystream = Cipher(algorithms.AES(rounding.bytes(16)), modes.CTR(bytes(16))).encryptor()
        float32 = flat.dtype == np.float32
        for start in range(0, flat.size, _BLOCK):
            chunk = flat[start : start + _BLOCK]
            v = values[: chunk.size]
            c = coins[: chunk.size]
            # min/max are NaN if any element is: the slow path then counts and fixes it.
            if float32 and -clip <= chunk.min() and chunk.max() <= clip:
                np.multiply(chunk, factor, out=v)
            else:
                np.copyto(v, chunk, casting="unsafe")
                within = int(np.count_nonzero(np.abs(v) <= clip))  # NaN is never within
                clipped += chunk.size - within
                v[np.isnan(v)] = 0.0
                np.clip(v, -clip, clip, out=v)
                v *= factor
            np.rint(v, out=v)
            c.fill(0)
            keystream.update_into(c.data, c.data)  # AES-CTR of zeros: the keystream itself
            np.add(v, c, out=v)
            v *= _INVERSE_COIN_LEVELS
            np.floor(v, out=v)
            np.copyto(out[start : start + chunk.size], v, casting="unsafe")
        return out.view(self.unsigned), clipped

    def decode(self, v: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Ring elements (a sum of shares) back to values, into ``out`` (float32)."""
        signed = np.asarray(v, dtype=self.unsigned).view(self.signed)
        np.multiply(signed, self.unit, out=out, dtype=np.float64, casting="unsafe")
        return out


def ring_dtype(bits: int) -> type[np.unsignedinteger]:
    """The unsigned dtype of a ring of ``bits`` (8, 16 or 32)."""
    return _UNSIGNED[bits]
