"""The round engine tells the round machine when a peer of its group cannot be reached: a
failed send, or a lost connection that a probe cannot re-open. Fakes stand in for the host
and the machine, so these run without a network."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest
import trio
import trio.testing

from gossiplearn.peer.net.engine import RoundEngine
from gossiplearn.testing.fakes import IdleMachine

GROUP = b"g" * 16
ALIVE, DEAD = b"a" * 32, b"d" * 32

pytestmark = pytest.mark.timeout(30)


class FakeStream:
    async def close(self) -> None:
        return None


class FakeHost:
    """Streams open to ALIVE; dialing DEAD fails, as a refused connection does."""

    def __init__(self) -> None:
        self.opened: list[bytes] = []

    async def open_stream(self, key: bytes, protocol: str, timeout_s: float = 5.0) -> object:
        await trio.sleep(0)
        if key == DEAD:
            raise OSError("connection refused")
        self.opened.append(key)
        return FakeStream()

    async def send_frame(self, key: bytes, stream: object, frame: bytes) -> None:
        await trio.sleep(0)


class GroupNode(IdleMachine):
    """In ``group`` (as the engine sees it from its start); records what the engine reports."""

    def __init__(self, group: bytes | None = GROUP) -> None:
        super().__init__()
        self.current_group = group
        self.unreachable: list[tuple[bytes, bytes]] = []

    def peer_unreachable(self, peer: bytes, group: bytes, now_ms: int) -> list[Any]:
        self.unreachable.append((peer, group))
        return []


async def settle(engine: RoundEngine, nursery: trio.Nursery) -> None:
    nursery.start_soon(engine.run)
    await trio.testing.wait_all_tasks_blocked()


async def reported(node: GroupNode, count: int) -> None:
    """Until the engine's task has passed ``count`` reports on (in a worker thread)."""
    with trio.fail_after(5):
        while len(node.unreachable) < count:
            await trio.sleep(0.01)


async def test_a_lost_connection_is_probed_and_an_unreachable_member_reported() -> None:
    host, node = FakeHost(), GroupNode()
    told: list[bytes] = []
    engine = RoundEngine(host, node, lambda action: None, on_unreachable=told.append)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await settle(engine, nursery)
        engine.peer_disconnected(ALIVE)  # another connection (or a redial) still works
        engine.peer_disconnected(DEAD)
        await reported(node, 1)
        await trio.testing.wait_all_tasks_blocked()
        assert host.opened == [ALIVE]
        assert node.unreachable == [(DEAD, GROUP)]
        assert told == [DEAD]  # the daemon marks it not live
        nursery.cancel_scope.cancel()


async def test_no_probe_outside_a_round_nor_after_the_engine_stopped() -> None:
    host, idle = FakeHost(), GroupNode(group=None)
    engine = RoundEngine(host, idle, lambda action: None)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await settle(engine, nursery)
        engine.peer_disconnected(DEAD)
        await trio.testing.wait_all_tasks_blocked()
        assert idle.unreachable == [] and host.opened == []
        nursery.cancel_scope.cancel()
    # Stopped: the host closes its connections afterwards and tells us; that must not raise
    # (it runs inside a libp2p notifee) even in the middle of a round.
    in_round = GroupNode()
    engine = RoundEngine(host, in_round, lambda action: None)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await settle(engine, nursery)
        nursery.cancel_scope.cancel()
    assert engine.view.current_group == GROUP
    engine.peer_disconnected(DEAD)
    assert in_round.unreachable == []


async def test_a_failed_send_is_reported_for_the_group_it_was_for() -> None:
    host, node = FakeHost(), GroupNode()
    engine = RoundEngine(host, node, lambda action: None)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await settle(engine, nursery)
        await engine._send_batch(DEAD, [b"frame"], 1.0, GROUP)
        await engine._send_batch(DEAD, [b"frame"], 1.0, None)  # outside any group: not told
        await reported(node, 1)
        await trio.sleep(0.1)
        assert node.unreachable == [(DEAD, GROUP)]
        assert engine.send_failures == 2
        nursery.cancel_scope.cancel()


class RecordingMachine(IdleMachine):
    """Records each frame with the number of the worker-thread call that took it; the first
    frame says it arrived and blocks its call until released (the others queue behind it)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.taken: list[tuple[bytes, int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def receive(self, frame: bytes, now_ms: int, *, from_peer: bytes | None = None) -> list[Any]:
        if not self.taken:
            self.entered.set()
            assert self.release.wait(10)
        self.taken.append((frame, self.calls))
        return []


class FramesHost(FakeHost):
    """A round stream whose frames the test hands over one by one (closed: the peer is done)."""

    def __init__(self) -> None:
        super().__init__()
        self.give, self._frames = trio.open_memory_channel[bytes](math.inf)

    async def receive_frame(self, key: bytes, stream: object, limit: int) -> bytes | None:
        try:
            return await self._frames.receive()
        except trio.EndOfChannel:
            return None


async def test_queued_frames_are_taken_together_in_order_and_a_command_behind_them_after() -> None:
    frames = [bytes([i]) * 8 for i in range(12)]
    host, node = FramesHost(), RecordingMachine()
    engine = RoundEngine(host, node, lambda action: None)  # type: ignore[arg-type]
    plain_call = engine._call

    async def counted_call(fn: Any, *args: object, **kwargs: object) -> Any:
        node.calls += 1
        return await plain_call(fn, *args, **kwargs)

    engine._call = counted_call  # type: ignore[method-assign]
    called_after: list[int] = []
    called = trio.Event()

    async def call_behind_the_frames() -> None:
        await engine.call(lambda machine: called_after.append(node.calls))
        called.set()

    async with trio.open_nursery() as nursery:
        await settle(engine, nursery)
        nursery.start_soon(engine.handle_stream, ALIVE, FakeStream())
        await host.give.send(frames[0])
        with trio.fail_after(10):  # the machine holds the first frame, alone
            await trio.to_thread.run_sync(node.entered.wait)
        for frame in frames[1:]:
            await host.give.send(frame)
        await host.give.aclose()
        await trio.testing.wait_all_tasks_blocked()  # every frame read and queued
        assert engine.queued_frames(ALIVE) == len(frames)
        nursery.start_soon(call_behind_the_frames)
        await trio.testing.wait_all_tasks_blocked()
        node.release.set()
        with trio.fail_after(10):
            await called.wait()
        nursery.cancel_scope.cancel()
    assert [frame for frame, _ in node.taken] == frames
    # Call 1 took the first frame alone (nothing was queued yet); the 11 behind it went in
    # calls of FRAME_BATCH (8) and 3; the command queued after them ran after the last.
    assert [call for _, call in node.taken] == [1] + [2] * 8 + [3] * 3
    assert called_after == [4]
