"""The bulk channel (peer/net/bulk.py): records sealed under a key from the round's agreement,
attributed to a sender only if they open under the key shared with it; strangers, wrong
keys, other groups and tampering are refused; a sender that cannot use it falls back to
libp2p; and a live round between real daemons uses it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from gossiplearn.peer.config import load_config, save_config
from gossiplearn.peer.learning.builtin import BuiltinLearning
from gossiplearn.peer.net import engine as engine_module
from gossiplearn.peer.net.bulk import (
    HEADER_BYTES,
    BulkChannel,
    BulkError,
    Opener,
    Sealer,
    make_header,
    parse_header,
    record_key,
)
from gossiplearn.peer.net.engine import RoundEngine
from gossiplearn.peer.net.runtime import PeerRuntime
from gossiplearn.protocol.events import RoundFinished
from gossiplearn.testing.cluster import key_of, prepare, running
from gossiplearn.testing.fakes import IdleMachine

pytestmark = pytest.mark.timeout(60)

GROUP, OTHER_GROUP = b"g" * 16, b"h" * 16
ALICE, BOB, CAROL = b"a" * 32, b"b" * 32, b"c" * 32
PAIR_KEY = bytes(range(32))


# ---- records ----


def test_records_open_in_order_under_the_pair_key_only() -> None:
    header = make_header(GROUP, ALICE, BOB)
    assert len(header) == HEADER_BYTES and parse_header(header) == (GROUP, ALICE, BOB)
    sealer = Sealer(PAIR_KEY, header)
    records = [sealer.seal(bytes([i]) * 1000) for i in range(3)]
    opener = Opener(PAIR_KEY, header)
    assert [opener.open(r) for r in records] == [bytes([i]) * 1000 for i in range(3)]

    with pytest.raises(BulkError):  # another pair's key
        Opener(bytes(32), header).open(records[0])
    with pytest.raises(BulkError):  # out of order (a dropped or replayed record)
        Opener(PAIR_KEY, header).open(records[1])
    tampered = bytearray(records[0])
    tampered[10] ^= 1
    with pytest.raises(BulkError):
        Opener(PAIR_KEY, header).open(bytes(tampered))
    other_direction = make_header(GROUP, BOB, ALICE, salt=header[-32:])
    with pytest.raises(BulkError):  # the header names the direction
        Opener(PAIR_KEY, other_direction).open(records[0])


def test_every_connection_has_its_own_key() -> None:
    first, second = make_header(GROUP, ALICE, BOB), make_header(GROUP, ALICE, BOB)
    assert first != second  # fresh salt
    assert record_key(PAIR_KEY, first) != record_key(PAIR_KEY, second)


# ---- live channel ----


class Receiver:
    """BOB's side: a bulk channel whose round is GROUP with ALICE in it."""

    def __init__(self, group: bytes = GROUP, members: dict[bytes, bytes] | None = None) -> None:
        self.group = group
        self.members = {ALICE: PAIR_KEY} if members is None else members
        self.frames: list[tuple[bytes, bytes]] = []
        self.channel = BulkChannel(BOB, self.key, self.deliver, max_record_bytes=1 << 20)

    async def key(self, group: bytes, sender: bytes, timeout_s: float) -> bytes | None:
        return self.members.get(sender) if group == self.group else None

    async def deliver(self, sender: bytes, read: object) -> bool:
        frame = await read()  # type: ignore[operator]
        if frame is None:
            return False
        self.frames.append((sender, frame))
        return True


async def serve(nursery: trio.Nursery, receiver: Receiver) -> tuple[str, int]:
    port = await nursery.start(receiver.channel.serve, "127.0.0.1", 0)
    return ("127.0.0.1", port)


async def test_frames_arrive_attributed_to_their_sender() -> None:
    receiver = Receiver()
    sender = BulkChannel(ALICE, receiver.key, receiver.deliver, max_record_bytes=1 << 20)
    frames = [os.urandom(n) for n in (1, 1000, 1 << 20)]
    async with trio.open_nursery() as nursery:
        address = await serve(nursery, receiver)
        await sender.send(address, GROUP, BOB, PAIR_KEY, frames)
        nursery.cancel_scope.cancel()
    assert receiver.frames == [(ALICE, f) for f in frames]


@pytest.mark.parametrize(
    ("group", "recipient", "pair_key", "who"),
    [
        (GROUP, BOB, bytes(32), ALICE),  # a key BOB does not share with ALICE
        (OTHER_GROUP, BOB, PAIR_KEY, ALICE),  # a group BOB is not in
        (GROUP, CAROL, PAIR_KEY, ALICE),  # addressed to someone else
        (GROUP, BOB, PAIR_KEY, CAROL),  # CAROL is not a member (knows ALICE's key, say)
    ],
    ids=["wrong_key", "other_group", "other_recipient", "not_a_member"],
)
async def test_refused_connections_deliver_nothing(
    group: bytes, recipient: bytes, pair_key: bytes, who: bytes
) -> None:
    receiver = Receiver()
    sender = BulkChannel(who, receiver.key, receiver.deliver, max_record_bytes=1 << 20)
    async with trio.open_nursery() as nursery:
        address = await serve(nursery, receiver)
        with pytest.raises((BulkError, trio.BrokenResourceError, OSError)):
            await sender.send(address, group, recipient, pair_key, [b"x" * 5000])
        nursery.cancel_scope.cancel()
    assert receiver.frames == []
    assert receiver.channel.refused == 1


async def test_a_stranger_gets_nothing_back_and_an_oversized_record_is_refused() -> None:
    receiver = Receiver()
    async with trio.open_nursery() as nursery:
        host, port = await serve(nursery, receiver)
        stranger = await trio.open_tcp_stream(host, port)
        await stranger.send_all(os.urandom(HEADER_BYTES))
        assert await stranger.receive_some(10) == b""  # closed, not a byte sent
        await stranger.aclose()

        member = await trio.open_tcp_stream(host, port)
        await member.send_all(make_header(GROUP, ALICE, BOB))
        await member.send_all((2 << 20).to_bytes(4, "big"))  # over the frame limit
        assert await member.receive_some(10) == b""
        await member.aclose()
        nursery.cancel_scope.cancel()
    assert receiver.frames == [] and receiver.channel.refused == 2


# ---- the engine: fallback to libp2p ----


class Stream:
    async def close(self) -> None:
        return None


class LoopbackHost:
    """Enough of a Host for the engine: records frames sent over libp2p streams."""

    listen = ["/ip4/127.0.0.1/tcp/0"]

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []
        self.handlers: dict[str, object] = {}

    def handle(self, protocol: str, handler: object) -> None:
        self.handlers[protocol] = handler

    async def open_stream(self, key: bytes, protocol: str, timeout_s: float = 5.0) -> object:
        return Stream()

    async def send_frame(self, key: bytes, stream: object, frame: bytes) -> None:
        self.sent.append((key, frame))


async def test_frames_go_over_libp2p_when_the_bulk_channel_cannot_be_reached() -> None:
    host = LoopbackHost()
    engine = RoundEngine(host, IdleMachine(), lambda action: None, bulk_port=0)  # type: ignore[arg-type]
    closed = trio.socket.socket()
    await closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    engine._bulk_addresses[BOB] = ("127.0.0.1", port)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        await trio.sleep(0.1)
        await engine._send_bulk(BOB, [b"one", b"two"], GROUP, PAIR_KEY)
        nursery.cancel_scope.cancel()
    assert host.sent == [(BOB, b"one"), (BOB, b"two")]
    assert engine.bulk_fallbacks == 1 and engine.bulk_frames_sent == 0
    assert BOB not in engine._bulk_addresses  # asked again after BULK_RETRY_S


# ---- a live round ----


@pytest.mark.timeout(180)
async def test_a_live_round_moves_its_parts_over_the_bulk_channel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "BULK_MIN_BYTES", 0)  # digits' backbone is ~30 KB
    dirs = prepare(tmp_path, 3)
    for directory in dirs:
        # The channel is under test, not personal acceptance: every member applies the average
        # (one early average may well be refused for hurting a peer's own validation loss).
        config = load_config(directory)
        config.training.acceptance = False
        save_config(directory, config)
    finished: list[RoundFinished] = []
    take_in = BuiltinLearning.round_finished

    async def recording(
        self: BuiltinLearning, runtime: PeerRuntime, result: RoundFinished
    ) -> Mapping[str, Any]:
        finished.append(result)
        return await take_in(self, runtime, result)

    monkeypatch.setattr(BuiltinLearning, "round_finished", recording)
    async with running(dirs) as peers:
        initiator, *others = peers
        await initiator.engine.start_round([key_of(p) for p in others])
        with trio.fail_after(60):
            while not all(p.rounds.completed >= 1 for p in peers):
                await trio.sleep(0.05)
        # Each member sends 2 PART shards (one per other member) and 2 x 1 REDUCED shards.
        assert all(p.engine.bulk_frames_sent >= 4 for p in peers)
        assert all(p.engine.bulk_fallbacks == 0 for p in peers)
        assert all(p.engine.bulk is not None and p.engine.bulk.frames_in >= 4 for p in peers)
        with trio.fail_after(30):  # all apply the same average (checkpointed just after)
            while len({p.digests["backbone"] for p in peers}) != 1:
                await trio.sleep(0.05)
    # ... and that average is the members' mean (equal weights), up to the fixed-point encoding.
    assert len(finished) == 3 and len({r.group for r in finished}) == 1
    assert all(np.array_equal(r.average, finished[0].average) for r in finished)
    mean = np.mean([r.contribution for r in finished], axis=0)
    np.testing.assert_allclose(finished[0].average, mean, rtol=0, atol=1e-4)


# ---- fuzzing the channel's parsing ----


@settings(max_examples=300, deadline=None)
@given(header=st.binary(min_size=0, max_size=200), record=st.binary(min_size=0, max_size=300))
def test_random_headers_and_records_never_open(header: bytes, record: bytes) -> None:
    try:
        group, sender, recipient = parse_header(header)
    except BulkError:
        return
    assert len(group) == 16 and len(sender) == len(recipient) == 32
    with pytest.raises(BulkError):
        Opener(PAIR_KEY, header).open(record)


@settings(max_examples=200, deadline=None)
@given(flip=st.integers(min_value=0), frame=st.binary(min_size=1, max_size=2000))
def test_any_bit_flip_in_a_record_or_its_header_is_refused(flip: int, frame: bytes) -> None:
    header = make_header(GROUP, ALICE, BOB)
    record = Sealer(PAIR_KEY, header).seal(frame)
    joined = bytearray(header + record)
    joined[(flip // 8) % len(joined)] ^= 1 << (flip % 8)
    flipped_header, flipped_record = bytes(joined[: len(header)]), bytes(joined[len(header) :])
    with pytest.raises(BulkError):
        Opener(PAIR_KEY, flipped_header).open(flipped_record)
