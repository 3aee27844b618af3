"""The structural pre-scan agrees with msgpack on what is one well-formed object, and stops
decoding bombs (tiny objects by the million) before they are allocated."""

import tracemalloc

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossiplearn.protocol import DEFAULT_LIMITS, ReplayGuard, decode_envelope
from gossiplearn.protocol.errors import MalformedFrame
from gossiplearn.protocol.prescan import prescan

LOOSE = {"max_objects": 10**9, "max_depth": 10**6}

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=300),
    lambda children: (
        st.lists(children, max_size=20) | st.dictionaries(st.text(max_size=8), children, max_size=8)
    ),
    max_leaves=60,
)


def _count(value) -> tuple[int, int]:
    """(objects, depth) of a decoded value, counted the way the pre-scan counts."""
    if isinstance(value, list):
        inner = [_count(v) for v in value]
        return 1 + sum(c for c, _ in inner), 1 + max((d for _, d in inner), default=0)
    if isinstance(value, dict):
        inner = [_count(v) for kv in value.items() for v in kv]
        return 1 + sum(c for c, _ in inner), 1 + max((d for _, d in inner), default=0)
    return 1, 0


@given(msgpack_values)
@settings(max_examples=500)
def test_prescan_accepts_every_encodable_value_and_counts_like_the_decoder(value):
    raw = msgpack.packb(value, use_bin_type=True)
    prescan(raw, **LOOSE)
    objects, depth = _count(value)
    prescan(raw, max_objects=objects, max_depth=max(depth, 1))
    with pytest.raises(MalformedFrame):
        prescan(raw, max_objects=objects - 1, max_depth=10**6)
    if depth > 1:
        with pytest.raises(MalformedFrame):
            prescan(raw, max_objects=10**9, max_depth=depth - 1)


@given(st.binary(max_size=200))
@settings(max_examples=1000)
def test_prescan_passes_exactly_what_msgpack_decodes_as_one_object(raw):
    try:
        msgpack.unpackb(raw, raw=True, strict_map_key=False, max_ext_len=0)
        decodes = True
    except Exception:
        decodes = False
    try:
        prescan(raw, **LOOSE)
        scans = True
    except MalformedFrame:
        scans = False
    # msgpack may still refuse what scans (unhashable map keys), never the other way round.
    assert scans or not decodes


@pytest.mark.parametrize(
    "bad", [b"", b"\x92\x01", b"\x01\x02", b"\xc1", b"\xd4\x01\x00", b"\xc4\x05ab"]
)
def test_prescan_refuses_truncated_trailing_reserved_and_ext(bad):
    with pytest.raises(MalformedFrame):
        prescan(bad, **LOOSE)


@pytest.mark.parametrize(
    "bomb",
    [
        # 1 MiB of 255-element arrays of empty arrays: ~64 MiB of lists if decoded.
        b"\xdc\x00\xff" + (b"\xdc\x00\x10" + (b"\xdc\x00\xff" + b"\x90" * 255) * 16) * 255,
        b"\xdd\xff\xff\xff\xff" + b"\x90" * 1_000_000,
        b"\xdf\x00\x00\xff\xff" + b"\x80\x90" * 500_000,
    ],
)
def test_object_bombs_are_refused_before_allocation(bomb):
    assert len(bomb) <= DEFAULT_LIMITS.max_frame_bytes
    tracemalloc.start()
    try:
        with pytest.raises(MalformedFrame, match="objects"):
            decode_envelope(bomb, recipient=b"\0" * 32, now_ms=0, replay=ReplayGuard())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < DEFAULT_LIMITS.max_frame_bytes
