"""Fixed-point encoding of floats into the rings Z/2^32 (vectors) and Z/2^64 (scalars).

A value x becomes round(x * 2^f) in two's complement, so sums of encoded values wrap exactly
like integers and decode back to the sum of the reals as long as it stays in range. Values
outside the range are clipped to it and counted, never silently wrapped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

DEFAULT_FRAC_BITS = 20


@dataclass(frozen=True)
class Ring:
    """Z/2^bits with its numpy unsigned (wire) and signed (decode) dtypes."""

    bits: int
    unsigned: type[np.unsignedinteger]
    signed: type[np.signedinteger]

    @property
    def min_int(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def max_int(self) -> int:
        return (1 << (self.bits - 1)) - 1


RING32 = Ring(32, np.uint32, np.int32)
RING64 = Ring(64, np.uint64, np.int64)


def _check_frac_bits(frac_bits: int, ring: Ring) -> None:
    if not 0 <= frac_bits < ring.bits - 1:
        raise ValueError(f"frac_bits must be in [0, {ring.bits - 2}], got {frac_bits}")


#: Elements encoded per block: the float64 scratch (512 KiB) stays in cache, and no temporary
#: the size of the whole vector is ever allocated (a 10M-element backbone used to make five).
_BLOCK = 1 << 16


def encode(
    x: npt.ArrayLike, frac_bits: int = DEFAULT_FRAC_BITS, scale: float = 1.0, ring: Ring = RING32
) -> tuple[np.ndarray, int]:
    """Encode ``scale * x`` with ``frac_bits`` fractional bits; returns (ring elements, clipped).

    Arithmetic is float64 so the only error is the final rounding (at most 2^-(f+1)).
    NaN encodes as 0 and counts as clipped, like +-inf which clip to the range ends.
    """
    _check_frac_bits(frac_bits, ring)
    source = np.asarray(x)
    flat = source.reshape(-1)
    out = np.empty(flat.shape, dtype=ring.signed)
    factor = float(scale) * float(1 << frac_bits)
    # Exact bounds in float64: 2^31 - 1 is exact; for the 64-bit ring the largest float64
    # below 2^63 is used so the cast to int64 never overflows.
    high = float(ring.max_int) if ring.bits <= 53 else float(np.nextafter(2.0**63, 0))
    low = float(ring.min_int)
    clipped = 0
    scratch = np.empty(min(_BLOCK, flat.size), dtype=np.float64)
    for start in range(0, flat.size, _BLOCK):
        chunk = flat[start : start + _BLOCK]
        scaled = scratch[: chunk.size]
        np.multiply(chunk, factor, out=scaled, dtype=np.float64)
        np.rint(scaled, out=scaled)
        # min/max are NaN if any element is: the slow path then counts and fixes every case.
        if not (low <= scaled.min() and scaled.max() <= high):
            nan = np.isnan(scaled)
            clipped += int(np.count_nonzero((scaled > high) | (scaled < low) | nan))
            scaled[nan] = 0.0
            np.clip(scaled, low, high, out=scaled)
        np.copyto(out[start : start + chunk.size], scaled, casting="unsafe")
    return out.reshape(source.shape).view(ring.unsigned), clipped


def decode(
    v: npt.NDArray[np.unsignedinteger],
    frac_bits: int = DEFAULT_FRAC_BITS,
    ring: Ring = RING32,
    dtype: type[np.floating] = np.float32,
    *,
    scale: float = 1.0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Decode ring elements (two's complement) back to floats, times ``scale``.

    Computed in float64 (x / 2^f is exact; times ``scale`` rounds once) and rounded once to
    ``dtype``, into ``out`` if given, in one pass with no full-size temporary.
    """
    _check_frac_bits(frac_bits, ring)
    signed = np.asarray(v, dtype=ring.unsigned).view(ring.signed)
    if out is None:
        out = np.empty(signed.shape, dtype=dtype)
    elif out.shape != signed.shape or out.dtype != np.dtype(dtype):
        raise ValueError("out must have the shape of v and the dtype asked for")
    # 2^-f is a power of two: x * (scale / 2^f) rounds exactly like (x / 2^f) * scale.
    factor = float(scale) / float(1 << frac_bits)
    if np.dtype(dtype) == np.float32 and ring.bits <= 32 and math.frexp(factor)[0] == 0.5:
        # A power-of-two factor: the int32 -> float32 cast rounds once and the product is
        # exact, so float32 arithmetic gives the float64 result bit for bit, twice as fast.
        np.multiply(signed, np.float32(factor), out=out, dtype=np.float32)
    else:
        np.multiply(signed, factor, out=out, dtype=np.float64)
    return out


def encode_scalar(x: float, frac_bits: int = 0) -> tuple[int, bool]:
    """Encode one float into Z/2^64; returns (element as a Python int, clipped)."""
    encoded, clipped = encode(np.array([x]), frac_bits, ring=RING64)
    return int(encoded[0]), bool(clipped)


def decode_scalar(u: int, frac_bits: int = 0) -> float:
    """Decode one Z/2^64 element back to a float."""
    if not 0 <= u < 1 << 64:
        raise ValueError("a Z/2^64 element is in [0, 2^64)")
    return float(decode(np.array([u], dtype=np.uint64), frac_bits, RING64, np.float64)[0])
