"""Frames of messages with shard data are built and checked without packing the data again:
they must stay byte-identical to msgpack's own canonical encoding of the whole map."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from gossiplearn.crypto import Identity
from gossiplearn.protocol import envelope as envelope_module
from gossiplearn.protocol.envelope import VERSION, decode_envelope, encode_envelope
from gossiplearn.protocol.errors import NonCanonicalEncoding
from gossiplearn.protocol.messages import Part, Reduced
from gossiplearn.protocol.replay import ReplayGuard
from gossiplearn.protocol.shards import split_shards

ALICE, BOB = Identity(b"\x01" * 32), Identity(b"\x02" * 32)
GROUP = b"g" * 16
TRANSCRIPT = b"\x05" * 32


def _bodies() -> list[object]:
    bodies: list[object] = []
    for n in (0, 1, 63, 64, 16_383, 16_384, 262_144):  # bin8, bin16 and bin32 data
        shard = split_shards(np.arange(n, dtype=np.uint32))[0]
        bodies += [Part(TRANSCRIPT, 1, shard), Reduced(TRANSCRIPT, 2, b"\x07" * 32, shard)]
    return bodies


@pytest.mark.parametrize("body", _bodies(), ids=lambda b: f"{b.TYPE}-{b.shard.length}")
def test_a_shard_frame_is_msgpacks_canonical_encoding(body: object) -> None:
    frame = encode_envelope(
        ALICE, ALICE.public_key, BOB.public_key, body, group=GROUP, seq=5, ts=1_000
    )
    decoded = msgpack.unpackb(frame, raw=False)
    assert msgpack.packb(decoded, use_bin_type=True) == frame
    assert decoded["v"] == VERSION and decoded["body"]["shard"]["data"] == body.shard.data
    envelope = decode_envelope(frame, recipient=BOB.public_key, now_ms=1_000, replay=ReplayGuard())
    assert envelope.body == body


def test_shard_data_in_a_wider_container_is_non_canonical() -> None:
    body = _bodies()[4]  # 63 elements: 252 bytes, a bin8
    frame = encode_envelope(
        ALICE, ALICE.public_key, BOB.public_key, body, group=GROUP, seq=5, ts=1_000
    )
    data = body.shard.data
    wider = frame.replace(
        b"\xc4" + bytes([len(data)]) + data, b"\xc5\x00" + bytes([len(data)]) + data
    )
    assert wider != frame
    with pytest.raises(NonCanonicalEncoding):
        decode_envelope(wider, recipient=BOB.public_key, now_ms=1_000, replay=ReplayGuard())


@pytest.mark.parametrize("body", _bodies(), ids=lambda b: f"{b.TYPE}-{b.shard.length}")
def test_frame_parts_cut_from_the_statement_are_the_packed_ones(body: Part | Reduced) -> None:
    """PART and REDUCED end with their shard's data: the parts around it are cut from the
    signed map, and are those found by packing the frame twice and comparing."""
    header: dict[str, object] = {"sender": ALICE.public_key, "recipient": BOB.public_key}
    header |= {"group": GROUP, "seq": 5, "ts": 1_000}
    signed = envelope_module._signed_map(
        VERSION, body.TYPE, ALICE.public_key, BOB.public_key, GROUP, 5, 1_000, body.to_signed_wire()
    )
    sig = ALICE.sign(signed)
    assert envelope_module._data_last(body)
    cut = envelope_module._data_frame_parts(header, body, sig, signed)
    assert cut == envelope_module._data_frame_parts(header, body, sig)
