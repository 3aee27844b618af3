"""Fixed-point ring encoding: error at most 2^-f, clipping counted, sums wrap like integers."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gossiplearn.crypto.ring import (
    RING32,
    RING64,
    decode,
    decode_scalar,
    encode,
    encode_scalar,
)


@given(
    frac_bits=st.integers(8, 24),
    data=st.data(),
)
@settings(max_examples=300)
def test_encode_decode_error_at_most_two_to_minus_f(frac_bits, data):
    limit = float(2 ** (24 - frac_bits - 1))  # keeps decoded values exact in float32
    x = data.draw(
        hnp.arrays(
            np.float32,
            st.integers(0, 200),
            elements=st.floats(-limit, limit, width=32, allow_nan=False),
        )
    )
    encoded, clipped = encode(x, frac_bits)
    assert encoded.dtype == np.uint32
    assert clipped == 0
    decoded = decode(encoded, frac_bits)
    assert decoded.dtype == np.float32
    assert np.all(np.abs(decoded.astype(np.float64) - x) <= 2.0**-frac_bits)


def test_values_beyond_the_range_are_clipped_and_counted():
    frac_bits = 16
    top = RING32.max_int / 2**frac_bits
    x = np.array([0.5, top * 2, -top * 4, np.inf, -np.inf, np.nan, 1.0], dtype=np.float32)
    encoded, clipped = encode(x, frac_bits)
    assert clipped == 5
    signed = encoded.view(np.int32)
    assert signed[1] == RING32.max_int and signed[3] == RING32.max_int
    assert signed[2] == RING32.min_int and signed[4] == RING32.min_int
    assert signed[5] == 0
    assert decode(encoded, frac_bits)[[0, 6]].tolist() == [0.5, 1.0]


def test_negative_values_are_twos_complement():
    encoded, _ = encode(np.array([-1.0], dtype=np.float32), 4)
    assert encoded[0] == (1 << 32) - 16


@given(st.lists(st.floats(-1000, 1000, allow_nan=False), min_size=2, max_size=10))
@settings(max_examples=200)
def test_ring_sum_of_encodings_decodes_to_sum_of_values(values):
    frac_bits = 16
    encoded = [encode(np.array([v]), frac_bits)[0] for v in values]
    total = np.zeros(1, np.uint32)
    for e in encoded:
        total += e  # wraps modulo 2^32
    assert abs(decode(total, frac_bits, dtype=np.float64)[0] - sum(values)) <= len(values) * 2 ** -(
        frac_bits + 1
    )


def test_scale_is_applied_before_rounding():
    encoded, _ = encode(np.array([3.0]), 10, scale=0.25)
    assert decode(encoded, 10)[0] == 0.75


@given(st.integers(0, 2**52), st.integers(0, 2**52))
def test_scalar_ring_is_64_bit_and_wraps(a, b):
    # Integers below 2^53 are exact in float64, so the wrapped sum must decode exactly.
    ea, _ = encode_scalar(float(a))
    eb, _ = encode_scalar(-float(b))
    assert 0 <= ea < 2**64 and 0 <= eb < 2**64
    assert decode_scalar((ea + eb) % 2**64) == float(a - b)


def test_scalar_clipping_is_reported():
    value, clipped = encode_scalar(2.0**70)
    assert clipped and value == RING64.max_int - 1023  # largest float64 below 2^63
    assert encode_scalar(12.0) == (12, False)


@pytest.mark.parametrize("frac_bits", [-1, 31, 40])
def test_frac_bits_out_of_range(frac_bits):
    with pytest.raises(ValueError):
        encode(np.zeros(1), frac_bits)


def test_decode_scalar_refuses_non_ring_values():
    with pytest.raises(ValueError):
        decode_scalar(-1)
    with pytest.raises(ValueError):
        decode_scalar(2**64)


@pytest.mark.parametrize("scale", [1.0, 0.25, 8.0, 0.3, -0.5])
@pytest.mark.parametrize("frac_bits", [0, 20, 30])
def test_decode_to_float32_is_the_float64_result_rounded_once(scale, frac_bits):
    # Power-of-two factors take a float32 path (one rounding in the int32 cast, an exact
    # product); it must give the float64 computation's float32 result bit for bit.
    rng = np.random.default_rng(frac_bits)
    edges = np.array([0, 1, 2**24 + 1, 2**31 - 1, 2**31, 2**32 - 1, 2**25 + 3], np.uint32)
    v = np.concatenate([edges, rng.integers(0, 2**32, 100_000, dtype=np.uint32)])
    expected = (v.view(np.int32).astype(np.float64) * (scale / 2**frac_bits)).astype(np.float32)
    decoded = decode(v, frac_bits, scale=scale)
    assert decoded.tobytes() == expected.tobytes()
