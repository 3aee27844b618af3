"""Fuzz tests for the envelope decoder: whatever arrives, it returns an Envelope or raises
ProtocolError, and nothing else ever escapes.

Every hostile input is derived from one valid, signed frame of each message type
(``VALID_FRAMES``): random bytes, truncations, bit flips, fields swapped for values of another
type, declared lengths in the gigabytes, deep nesting, non-canonical re-encodings of the same
content, wrong-size keys and signatures, and valid frames that fail the receiver's checks
(signature, recipient, freshness, replay, version). Where the refusal reason is determined by
the input, the test asserts it exactly.
"""

from __future__ import annotations

import struct
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossiplearn.crypto.identity import Identity
from gossiplearn.protocol import (
    DEFAULT_LIMITS,
    Abort,
    Accept,
    Busy,
    Cancel,
    Confirm,
    Envelope,
    Invite,
    Message,
    Part,
    PeerRecord,
    Peers,
    ProtocolError,
    Ready,
    Reduced,
    ReplayGuard,
    Roster,
    Status,
    decode_envelope,
    encode_envelope,
    split_shards,
    verify_envelope,
)
from gossiplearn.protocol.errors import FrameTooLarge
from gossiplearn.protocol.replay import DEFAULT_FRESHNESS_MS

NOW_MS = 1_700_000_000_000
SEQ = 1
GROUP = bytes(range(16))
SENDER = Identity(b"\x01" * 32)
RECIPIENT = Identity(b"\x02" * 32)
THIRD = Identity(b"\x03" * 32)
MEMBERS = (SENDER.public_key, RECIPIENT.public_key, THIRD.public_key)
SCHEMA_HASH = b"\x5a" * 32
TRANSCRIPT = b"\x3c" * 32

#: Peak allocation allowed while refusing a hostile frame, and time allowed for it.
MEMORY_BUDGET = 4 * DEFAULT_LIMITS.max_frame_bytes
TIME_BUDGET_S = 1.0

_PACKER = msgpack.Packer(use_bin_type=True)


def fuzz_settings(max_examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return settings(
        max_examples=max_examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


# --- valid frames --------------------------------------------------------------------------


def seal(
    body: Message,
    *,
    signer: Identity = SENDER,
    recipient: bytes = RECIPIENT.public_key,
    ts: int = NOW_MS,
) -> bytes:
    """A valid frame from SENDER (signed by ``signer``), in GROUP unless the type has none."""
    group = b"" if isinstance(body, Peers | Status) else GROUP
    return encode_envelope(signer, SENDER.public_key, recipient, body, group=group, seq=SEQ, ts=ts)


def _accept_from(member: Identity) -> bytes:
    return encode_envelope(
        member,
        member.public_key,
        SENDER.public_key,
        Accept(ephemeral_key=member.public_key[::-1], schema_hash=SCHEMA_HASH, weight=3),
        group=GROUP,
        seq=SEQ,
        ts=NOW_MS,
    )


def _sample_bodies() -> list[Message]:
    part_shard = split_shards(np.arange(5, dtype=np.uint32))[0]
    reduced_shard = split_shards(np.arange(6, dtype=np.uint64), max_bytes=16)[-1]
    record = PeerRecord.create(
        SENDER, SENDER.public_key, ("/ip4/127.0.0.1/tcp/4001",), 7, NOW_MS + 60_000
    )
    return [
        Invite(
            MEMBERS,
            SCHEMA_HASH,
            length=11,
            frac_bits=16,
            max_weight=1,
            deadline_ms=NOW_MS + 5_000,
        ),
        Accept(ephemeral_key=b"\x42" * 32, schema_hash=SCHEMA_HASH, weight=2**32 - 1),
        Busy("already in a round"),
        Roster(
            MEMBERS,
            tuple(_accept_from(m) for m in (SENDER, RECIPIENT, THIRD)),
            schema_hash=SCHEMA_HASH,
            length=11,
            frac_bits=16,
            max_weight=99,
            deadline_ms=NOW_MS + 9_000,
        ),
        Cancel("initiator left"),
        Ready(transcript=TRANSCRIPT, roster=b"roster statement"),
        Part(transcript=TRANSCRIPT, part=1, shard=part_shard),
        Reduced(transcript=TRANSCRIPT, part=2, part_digest=b"\x17" * 32, shard=reduced_shard),
        Confirm(transcript=TRANSCRIPT, digest=b"\x18" * 32, evidence=(b"statement",)),
        Abort(TRANSCRIPT, "timeout", proof=b"proof", evidence=b"statement"),
        Peers((record,)),
        Status('{"rounds": 3}'),
    ]


SAMPLE_BODIES: dict[str, Message] = {body.TYPE: body for body in _sample_bodies()}
VALID_FRAMES: dict[str, bytes] = {name: seal(body) for name, body in SAMPLE_BODIES.items()}
#: Each valid frame as msgpack.unpackb gives it: the starting point for re-encoded variants.
FRAME_DOCS: dict[str, dict[str, Any]] = {
    name: msgpack.unpackb(raw, raw=False) for name, raw in VALID_FRAMES.items()
}


# --- decoding --------------------------------------------------------------------------------


def decode(raw: bytes | bytearray | memoryview, replay: ReplayGuard | None = None) -> Envelope:
    return decode_envelope(
        raw,
        recipient=RECIPIENT.public_key,
        now_ms=NOW_MS,
        replay=ReplayGuard() if replay is None else replay,
    )


def decode_outcome(raw: bytes) -> Envelope | ProtocolError:
    """The envelope, or the ProtocolError refusing it; any other exception propagates."""
    try:
        return decode(raw)
    except ProtocolError as error:
        return error


def rejection_reason(raw: bytes, replay: ReplayGuard | None = None) -> str:
    """The reason code ``raw`` is refused with; fails the test if it is accepted."""
    with pytest.raises(ProtocolError) as refused:
        decode(raw, replay)
    return refused.value.reason


def traced_rejection(raw: bytes | bytearray | memoryview) -> tuple[ProtocolError, int, float]:
    """Refuse ``raw``; return the error, the peak bytes allocated meanwhile, and the seconds."""
    already_tracing = tracemalloc.is_tracing()
    if not already_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    baseline, _ = tracemalloc.get_traced_memory()
    started = time.perf_counter()
    try:
        with pytest.raises(ProtocolError) as refused:
            decode(raw)
    finally:
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        if not already_tracing:
            tracemalloc.stop()
    return refused.value, peak - baseline, seconds


# --- building variants of a decoded frame -----------------------------------------------------

Path = tuple[str | int, ...]


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def entries(container: dict | list) -> Iterable[tuple[str | int, Any]]:
    """(key, value) of a map, (index, item) of an array."""
    return container.items() if isinstance(container, dict) else enumerate(container)


def container_header(container: dict | list) -> bytes:
    """The canonical msgpack map or array header for ``container``'s size."""
    if isinstance(container, dict):
        return _PACKER.pack_map_header(len(container))
    return _PACKER.pack_array_header(len(container))


def value_paths(value: Any, prefix: Path = ()) -> Iterator[Path]:
    """The path of ``value`` itself and of every map value and array item inside it."""
    yield prefix
    if isinstance(value, dict | list):
        for key, item in entries(value):
            yield from value_paths(item, (*prefix, key))


def value_at(doc: Any, path: Path) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def replaced_at(doc: Any, path: Path, value: Any) -> Any:
    """A copy of ``doc`` with the value at ``path`` replaced (map key order kept)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {k: replaced_at(v, rest, value) if k == head else v for k, v in doc.items()}
    return [replaced_at(v, rest, value) if i == head else v for i, v in enumerate(doc)]


def encoded_with(doc: Any, path: Path, encoding: bytes) -> bytes:
    """The canonical encoding of ``doc``, except the value at ``path`` is the given bytes."""
    if not path:
        return encoding
    head, rest = path[0], path[1:]
    key_encoding = pack if isinstance(doc, dict) else lambda index: b""
    return container_header(doc) + b"".join(
        key_encoding(key) + (encoded_with(item, rest, encoding) if key == head else pack(item))
        for key, item in entries(doc)
    )


def encoded_map(pairs: list[tuple[str, Any]]) -> bytes:
    """A map of exactly these entries, repeats and order included."""
    return _PACKER.pack_map_header(len(pairs)) + b"".join(pack(k) + pack(v) for k, v in pairs)


_INT_FORMATS = (
    (0xCC, ">B"), (0xCD, ">H"), (0xCE, ">I"), (0xCF, ">Q"),
    (0xD0, ">b"), (0xD1, ">h"), (0xD2, ">i"), (0xD3, ">q"),
)  # fmt: skip
_LENGTH_FORMATS: dict[type, tuple[tuple[int, str], ...]] = {
    str: ((0xD9, ">B"), (0xDA, ">H"), (0xDB, ">I")),
    bytes: ((0xC4, ">B"), (0xC5, ">H"), (0xC6, ">I")),
    list: ((0xDC, ">H"), (0xDD, ">I")),
    dict: ((0xDE, ">H"), (0xDF, ">I")),
}


def _tagged(tag: int, fmt: str, number: int) -> bytes | None:
    try:
        return bytes([tag]) + struct.pack(fmt, number)
    except struct.error:
        return None


def wider_encodings(value: int | str | bytes | list | dict) -> list[bytes]:
    """Every other msgpack encoding of ``value`` that decodes to the same value."""
    canonical = pack(value)
    if type(value) is int:
        encodings = [_tagged(tag, fmt, value) for tag, fmt in _INT_FORMATS]
    else:
        if isinstance(value, dict | list):
            size, payload = len(value), canonical[len(container_header(value)) :]
        else:
            payload = value.encode() if isinstance(value, str) else value
            size = len(payload)
        heads = (_tagged(tag, fmt, size) for tag, fmt in _LENGTH_FORMATS[type(value)])
        encodings = [head + payload for head in heads if head is not None]
    return [e for e in encodings if e is not None and e != canonical]


def signed_frame(signer: Identity, fields: dict[str, Any]) -> bytes:
    """A frame of ``fields`` (every header field but sig, in wire order) signed by ``signer``."""
    return pack({**fields, "sig": signer.sign(pack(fields))})


FRAME_NAMES = st.sampled_from(sorted(VALID_FRAMES))
#: (frame name, path) for every value in every valid frame, the whole frame included.
VALUE_PATHS = [(name, path) for name, doc in FRAME_DOCS.items() for path in value_paths(doc)]
#: (frame name, path) of every map with at least two entries, whose order can change.
MAP_PATHS = [
    (name, path)
    for name, path in VALUE_PATHS
    if isinstance(value_at(FRAME_DOCS[name], path), dict)
    and len(value_at(FRAME_DOCS[name], path)) > 1
]

#: (frame name, path) of every value with a wider encoding (all but uint64s of 2**63 and up).
WIDENABLE_PATHS = [
    (name, path) for name, path in VALUE_PATHS if wider_encodings(value_at(FRAME_DOCS[name], path))
]

# --- round trip ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALID_FRAMES))
def test_every_message_type_round_trips(name: str) -> None:
    envelope = decode(VALID_FRAMES[name])
    assert envelope.type == name
    assert envelope.body == SAMPLE_BODIES[name]
    assert (envelope.sender, envelope.recipient, envelope.seq, envelope.ts) == (
        SENDER.public_key,
        RECIPIENT.public_key,
        SEQ,
        NOW_MS,
    )


def test_variant_builders_reproduce_the_valid_frames() -> None:
    for name, path in VALUE_PATHS:
        doc = FRAME_DOCS[name]
        assert encoded_with(doc, path, pack(value_at(doc, path))) == VALID_FRAMES[name]
        assert pack(replaced_at(doc, path, value_at(doc, path))) == VALID_FRAMES[name]


# --- 1-3: random bytes, truncations, bit flips ------------------------------------------------


@fuzz_settings(max_examples=3000)
@given(raw=st.binary(max_size=4096))
def test_random_bytes_decode_or_raise_protocol_error(raw: bytes) -> None:
    assert isinstance(decode_outcome(raw), Envelope | ProtocolError)


@st.composite
def truncated_frames(draw: st.DrawFn) -> bytes:
    raw = VALID_FRAMES[draw(FRAME_NAMES)]
    return raw[: draw(st.integers(0, len(raw) - 1))]


@fuzz_settings(max_examples=1200)
@given(raw=truncated_frames())
def test_truncated_frames_are_incomplete(raw: bytes) -> None:
    assert rejection_reason(raw) == "decode"


@st.composite
def bit_flipped_frames(draw: st.DrawFn) -> bytes:
    raw = bytearray(VALID_FRAMES[draw(FRAME_NAMES)])
    bits = st.integers(0, 8 * len(raw) - 1)
    for bit in draw(st.lists(bits, min_size=1, max_size=8, unique=True)):
        raw[bit // 8] ^= 1 << (bit % 8)
    return bytes(raw)


@fuzz_settings(max_examples=2500)
@given(raw=bit_flipped_frames())
def test_bit_flipped_frames_are_never_accepted(raw: bytes) -> None:
    rejection_reason(raw)


# --- 4: type confusion -----------------------------------------------------------------------

_VALUES_BY_TYPE: dict[type, st.SearchStrategy[Any]] = {
    type(None): st.none(),
    bool: st.booleans(),
    int: st.integers(-(2**63), 2**64 - 1) | st.sampled_from([-1, -(2**63), 2**63, 2**64 - 1]),
    float: st.floats(),
    bytes: st.binary(max_size=40),
    str: st.text(max_size=40),
    list: st.lists(st.integers(0, 255) | st.binary(max_size=4), max_size=4),
    dict: st.dictionaries(st.text(max_size=8), st.integers(0, 255), max_size=4),
}


def foreign_values(original: Any) -> st.SearchStrategy[Any]:
    """Values of every type but ``original``'s, and negative ints where it is an (unsigned) int."""
    others = [values for kind, values in _VALUES_BY_TYPE.items() if kind is not type(original)]
    if type(original) is int:
        others.append(st.integers(-(2**63), -1))
    return st.one_of(others)


@st.composite
def type_confused_frames(draw: st.DrawFn) -> bytes:
    name, path = draw(st.sampled_from(VALUE_PATHS))
    doc = FRAME_DOCS[name]
    return pack(replaced_at(doc, path, draw(foreign_values(value_at(doc, path)))))


@fuzz_settings(max_examples=1500)
@given(raw=type_confused_frames())
def test_a_field_of_the_wrong_type_violates_the_schema(raw: bytes) -> None:
    assert rejection_reason(raw) == "schema"


# --- 5-6: declared lengths in the gigabytes, deep nesting ------------------------------------

_HUGE_LENGTH_TAGS = {"bin32": 0xC6, "str32": 0xDB, "array32": 0xDD, "map32": 0xDF, "ext32": 0xC9}
_HUGE_LENGTHS = st.sampled_from(
    [0xFFFFFFFF, 2**31, 2**31 - 1, 2**30, DEFAULT_LIMITS.max_frame_bytes + 1]
) | st.integers(DEFAULT_LIMITS.max_frame_bytes + 1, 0xFFFFFFFF)


@st.composite
def placed(draw: st.DrawFn, encodings: st.SearchStrategy[bytes]) -> bytes:
    """An encoding alone, or in place of some value of an otherwise valid frame."""
    encoding = draw(encodings)
    if draw(st.booleans()):
        return encoding
    name, path = draw(st.sampled_from(VALUE_PATHS))
    return encoded_with(FRAME_DOCS[name], path, encoding)


@st.composite
def huge_declared_lengths(draw: st.DrawFn) -> bytes:
    tag = draw(st.sampled_from(sorted(_HUGE_LENGTH_TAGS.values())))
    return bytes([tag]) + struct.pack(">I", draw(_HUGE_LENGTHS)) + draw(st.binary(max_size=16))


@fuzz_settings(max_examples=800)
@given(raw=placed(huge_declared_lengths()))
def test_gigabyte_lengths_are_refused_without_allocating(raw: bytes) -> None:
    error, peak, seconds = traced_rejection(raw)
    assert error.reason == "decode"
    assert peak < MEMORY_BUDGET
    assert seconds < TIME_BUDGET_S


@pytest.mark.parametrize("container", [bytes, bytearray, memoryview])
@pytest.mark.parametrize(
    "oversized",
    [
        bytes(DEFAULT_LIMITS.max_frame_bytes + 1),
        # A well-formed bin32 value of max_frame_bytes + 1 bytes in all.
        b"\xc6"
        + struct.pack(">I", DEFAULT_LIMITS.max_frame_bytes - 4)
        + bytes(DEFAULT_LIMITS.max_frame_bytes - 4),
    ],
    ids=["zeros", "bin32"],
)
def test_an_oversized_frame_is_refused_before_decoding(oversized: bytes, container: type) -> None:
    error, peak, _ = traced_rejection(container(oversized))
    assert isinstance(error, FrameTooLarge)
    assert peak < MEMORY_BUDGET


_NESTING_PATTERNS = st.sampled_from([(b"\x91",), (b"\x81\xa1a",), (b"\x91", b"\x81\xa1a")])


@st.composite
def deeply_nested(draw: st.DrawFn) -> bytes:
    """Arrays and/or maps nested 10..5000 deep around nil."""
    pattern = draw(_NESTING_PATTERNS)
    depth = draw(st.integers(10, 5000))
    return b"".join(pattern[level % len(pattern)] for level in range(depth)) + b"\xc0"


@fuzz_settings(max_examples=500)
@given(raw=placed(deeply_nested()))
def test_deep_nesting_is_refused(raw: bytes) -> None:
    assert rejection_reason(raw) in {"decode", "schema"}


# --- 7: non-canonical encodings of valid content ----------------------------------------------


@st.composite
def widened_frames(draw: st.DrawFn) -> bytes:
    """A valid frame with one int, str, bin, array or map (or the frame itself) encoded wider."""
    name, path = draw(st.sampled_from(WIDENABLE_PATHS))
    doc = FRAME_DOCS[name]
    return encoded_with(doc, path, draw(st.sampled_from(wider_encodings(value_at(doc, path)))))


# About 620 distinct cases exist; Hypothesis stops early once it has tried them all.
@fuzz_settings(max_examples=700)
@given(raw=widened_frames())
def test_a_wider_encoding_of_valid_content_is_non_canonical(raw: bytes) -> None:
    assert rejection_reason(raw) == "non_canonical"


@st.composite
def reordered_frames(draw: st.DrawFn) -> bytes:
    name, path = draw(st.sampled_from(MAP_PATHS))
    doc = FRAME_DOCS[name]
    pairs = list(value_at(doc, path).items())
    reordered = draw(st.permutations(pairs).filter(lambda order: order != pairs))
    return encoded_with(doc, path, encoded_map(reordered))


@fuzz_settings(max_examples=400)
@given(raw=reordered_frames())
def test_reordered_keys_are_non_canonical(raw: bytes) -> None:
    assert rejection_reason(raw) == "non_canonical"


@st.composite
def frames_with_a_repeated_key(draw: st.DrawFn) -> tuple[bytes, str]:
    """A map with one entry repeated (same content: non_canonical) or repeated in place of
    another entry (a key missing: schema), and the reason expected."""
    name, path = draw(st.sampled_from(MAP_PATHS))
    doc = FRAME_DOCS[name]
    pairs = list(value_at(doc, path).items())
    repeated = draw(st.sampled_from(pairs))
    if draw(st.booleans()):
        pairs.insert(draw(st.integers(0, len(pairs))), repeated)
        expected = "non_canonical"
    else:
        others = [i for i, pair in enumerate(pairs) if pair != repeated]
        pairs[draw(st.sampled_from(others))] = repeated
        expected = "schema"
    return encoded_with(doc, path, encoded_map(pairs)), expected


@fuzz_settings(max_examples=500)
@given(case=frames_with_a_repeated_key())
def test_repeated_keys_are_refused(case: tuple[bytes, str]) -> None:
    raw, expected = case
    assert rejection_reason(raw) == expected


# --- 8: wrong-size keys and signatures ---------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "size"),
    [
        *((("sender",), n) for n in (0, 31, 33)),
        *((("recipient",), n) for n in (0, 31, 33)),
        *((("sig",), n) for n in (0, 63, 65)),
        *((("group",), n) for n in (1, 15, 17)),
        *((("body", "ephemeral_key"), n) for n in (0, 31, 33)),
    ],
)
def test_wrong_size_keys_and_signatures_violate_the_schema(path: Path, size: int) -> None:
    raw = pack(replaced_at(FRAME_DOCS["ACCEPT"], path, b"\x07" * size))
    assert rejection_reason(raw) == "schema"


@pytest.mark.parametrize(
    ("name", "size"),
    [
        *((name, n) for name in ("READY", "PART", "REDUCED", "CONFIRM") for n in (0, 31, 33)),
        *(("ABORT", n) for n in (1, 16, 31, 33)),  # empty (before the roster) or 32 bytes
    ],
)
def test_a_transcript_of_the_wrong_size_violates_the_schema(name: str, size: int) -> None:
    raw = pack(replaced_at(FRAME_DOCS[name], ("body", "transcript"), b"\x07" * size))
    assert rejection_reason(raw) == "schema"


@pytest.mark.parametrize("weight", [0, 2**32, 2**64 - 1])
def test_an_accept_declaring_a_weight_outside_1_to_2_32_minus_1_violates_the_schema(
    weight: int,
) -> None:
    raw = pack(replaced_at(FRAME_DOCS["ACCEPT"], ("body", "weight"), weight))
    assert rejection_reason(raw) == "schema"


def test_an_accept_without_a_weight_violates_the_schema() -> None:
    # Round v2's ACCEPT: the weight went in a WEIGHT_SHARE, which no longer exists.
    doc = FRAME_DOCS["ACCEPT"]
    body = {k: v for k, v in doc["body"].items() if k != "weight"}
    assert rejection_reason(pack(replaced_at(doc, ("body",), body))) == "schema"
    weight_share = replaced_at(doc, ("type",), "WEIGHT_SHARE")
    assert rejection_reason(pack(replaced_at(weight_share, ("body",), {"value": 7}))) == "schema"


# --- 9: valid frames the receiver must refuse --------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALID_FRAMES))
def test_a_frame_signed_by_another_key_has_a_bad_signature(name: str) -> None:
    assert rejection_reason(seal(SAMPLE_BODIES[name], signer=THIRD)) == "signature"


@pytest.mark.parametrize("name", sorted(VALID_FRAMES))
def test_a_frame_for_another_peer_is_refused(name: str) -> None:
    raw = seal(SAMPLE_BODIES[name], recipient=THIRD.public_key)
    assert rejection_reason(raw) == "recipient"


@pytest.mark.parametrize(
    "ts", [NOW_MS - DEFAULT_FRESHNESS_MS - 1, NOW_MS + DEFAULT_FRESHNESS_MS + 1, 0, 2**64 - 1]
)
def test_a_frame_outside_the_freshness_window_is_stale(ts: int) -> None:
    assert rejection_reason(seal(SAMPLE_BODIES["STATUS"], ts=ts)) == "stale"


def test_the_same_frame_twice_is_a_replay() -> None:
    replay = ReplayGuard()
    decode(VALID_FRAMES["PART"], replay)
    assert rejection_reason(VALID_FRAMES["PART"], replay) == "replay"


@pytest.mark.parametrize("version", [1, 2, 4])
def test_a_validly_signed_frame_of_another_version_is_refused(version: int) -> None:
    fields = {k: v for k, v in FRAME_DOCS["BUSY"].items() if k != "sig"}
    assert signed_frame(SENDER, fields) == VALID_FRAMES["BUSY"]  # only the version differs
    frame = signed_frame(SENDER, fields | {"v": version})
    assert rejection_reason(frame) == "version"
    with pytest.raises(ProtocolError) as refused:
        verify_envelope(frame)
    assert str(refused.value) == f"version: version {version}, this peer speaks 3"
    assert refused.value.header["sender"] == SENDER.public_key  # type: ignore[attr-defined]
