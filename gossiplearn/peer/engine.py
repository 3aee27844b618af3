"""Drives the sans-I/O round machine (:class:`~gossiplearn.protocol.node.Node`) over libp2p.

One task owns the machine: frames from round streams, "start a round", "here is a new
contribution" and "abort" all arrive through one channel and are fed to the machine in order,
in a worker thread (masking and encoding 10M-element vectors must not stall the event loop:
yamux resets a stream whose reader is stuck for 5 s). Stream handlers only read frames into
that channel, so they keep reading however busy the machine is. The machine's Send actions go
out as one new stream per peer and batch; its outcomes go to the daemon's callback.

Memory: the inbox holds at most INBOX_CAPACITY frames, and each peer may have at most
PEER_FRAMES frames read or queued (taken before a frame is read, given back once the machine
has taken it). So a peer's frames in memory are bounded however many streams it opens, and
however fast it writes: PEER_FRAMES x the frame limit, ~34 MiB; the rest of a flood waits
unread in its streams, each within yamux's receive window (for a sender that honours it:
py-libp2p 0.8.1 only logs a peer that overruns it). And one peer cannot fill the inbox and
starve the others: it never holds more than PEER_FRAMES of its INBOX_CAPACITY slots.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from gossiplearn.peer.host import ROUND_PROTOCOL, Host
from gossiplearn.protocol.envelope import DEFAULT_LIMITS
from gossiplearn.protocol.events import Action, RoundUsageError, Send, Wake
from gossiplearn.protocol.node import Node

log = logging.getLogger("gossiplearn.engine")

INBOX_CAPACITY = 128
#: Frames of one peer read or queued for the machine at once. An honest member sends us
#: ~2 x (the vector / group size) per round in <= 1 MiB shards (20 frames for 10M elements
#: and k = 4), and the machine takes each in a few milliseconds (decode and signature check
#: of ~1 MiB), so a member's streams only wait on its quota while the machine is busy
#: masking (under a second even for 10M elements), far below yamux's 5 s write timeout. 32
#: bounds a hostile peer to 32 frames (~34 MiB) and leaves 96 of the 128 inbox slots to
#: everyone else.
PEER_FRAMES = 32
SEND_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 3.0


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class _Frame:
    sender: bytes
    frame: bytes


class _PeerQuota:
    """At most ``per_peer`` slots per peer; a task waits for one of its peer's slots."""

    def __init__(self, per_peer: int) -> None:
        self.per_peer = per_peer
        self._slots: dict[bytes, trio.Semaphore] = {}  # only peers holding or awaiting slots

    def held(self, key: bytes) -> int:
        slots = self._slots.get(key)
        return 0 if slots is None else self.per_peer - slots.value

    async def acquire(self, key: bytes) -> None:
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = trio.Semaphore(self.per_peer)
        await slots.acquire()

    def release(self, key: bytes) -> None:
        slots = self._slots[key]
        slots.release()
        # All given back and nobody waiting (a waiter implies value 0): forget the peer.
        if slots.value == self.per_peer:
            del self._slots[key]


@dataclass(frozen=True)
class MachineView:
    """What the rest of the daemon may read of the round machine: a copy refreshed by the
    engine's task after every input, so nothing reads the machine while a worker thread is
    inside it."""

    busy: bool = False
    current_group: bytes | None = None
    #: (group, started_ms, deadline_ms) of the round in progress
    current_round: tuple[bytes, int, int] | None = None
    contribution_fresh: bool = False
    #: peers backed off or refused now: {key: {strikes, backoff_s, refused}}
    blocked: dict[bytes, dict[str, object]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Call:
    """Run ``fn(machine)`` in the machine's task; its result (or exception) goes to ``box``."""

    fn: Callable[[Node], Any]
    box: list[Any]
    done: trio.Event


@dataclass(frozen=True)
class _Start:
    candidates: tuple[bytes, ...]


@dataclass(frozen=True)
class _Contribution:
    vector: np.ndarray
    weight: int
    schema_hash: bytes


@dataclass(frozen=True)
class _Abort:
    reason: str
    done: trio.Event


@dataclass(frozen=True)
class _Unreachable:
    """Frames of ``group`` could not reach ``peer``, or its connection died and it could
    not be reached again."""

    peer: bytes
    group: bytes


class RoundEngine:
    def __init__(
        self,
        host: Host,
        node: Node,
        on_action: Callable[[Action], None],
        on_unreachable: Callable[[bytes], None] = lambda peer: None,
    ) -> None:
        self.host = host
        self.node = node
        self._on_action = on_action
        self._on_unreachable = on_unreachable
        self._inbox_send, self._inbox = trio.open_memory_channel[object](INBOX_CAPACITY)
        self._quota = _PeerQuota(PEER_FRAMES)
        self._nursery: trio.Nursery | None = None
        self.send_failures = 0
        self.view = MachineView()
        self._refresh_view()

    # ---- inputs ----

    async def handle_stream(self, key: bytes, stream: object) -> None:
        """Round protocol handler: queue every frame the peer sends on this stream.

        A slot of the peer's quota is taken before each frame is read, and handed on with the
        frame to the machine's task, which gives it back (see PEER_FRAMES).
        """
        limit = DEFAULT_LIMITS.max_frame_bytes
        while True:
            await self._quota.acquire(key)
            queued = False
            try:
                frame = await self.host.receive_frame(key, stream, limit)
                if frame is None:
                    break
                await self._inbox_send.send(_Frame(key, frame))
                queued = True
            finally:
                if not queued:
                    self._quota.release(key)
        await stream.close()  # type: ignore[attr-defined]

    def queued_frames(self, key: bytes) -> int:
        """Frames of the peer ``key`` read or queued, not yet taken by the machine."""
        return self._quota.held(key)

    async def start_round(self, candidates: Sequence[bytes]) -> None:
        await self._inbox_send.send(_Start(tuple(candidates)))

    async def set_contribution(self, vector: np.ndarray, weight: int, schema_hash: bytes) -> None:
        await self._inbox_send.send(_Contribution(vector, weight, schema_hash))

    async def call(self, fn: Callable[[Node], Any]) -> Any:
        """``fn(machine)``, run in the machine's own task (the only place that touches it);
        returns its result or raises its exception."""
        box: list[Any] = []
        done = trio.Event()
        await self._inbox_send.send(_Call(fn, box, done))
        await done.wait()
        result, error = box
        if error is not None:
            raise error
        return result

    async def abort(self, reason: str, timeout_s: float = 2.0) -> None:
        """Abort the current round (ABORT sent to its members) and wait for it, bounded."""
        done = trio.Event()
        with trio.move_on_after(timeout_s):
            await self._inbox_send.send(_Abort(reason, done))
            await done.wait()

    # ---- the machine's task ----

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                while True:
                    deadline = self.node.next_deadline()
                    timeout = (
                        math.inf if deadline is None else max(0.0, (deadline - now_ms()) / 1000)
                    )
                    command = None
                    with trio.move_on_after(timeout):
                        command = await self._inbox.receive()
                    if command is None:
                        actions = await self._call(self.node.tick, now_ms())
                    else:
                        actions = await self._execute(command)
                    self._refresh_view()
                    self._dispatch(actions)
        finally:
            # The host closes its connections after we stop, and tells peer_disconnected.
            self._nursery = None

    async def _call(self, fn: Callable[..., Any], *args: object, **kwargs: object) -> Any:
        """Run a machine method in a worker thread (only this task ever touches the machine)."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    async def _execute(self, command: object) -> list[Action]:
        node = self.node
        if isinstance(command, _Frame):
            try:
                return await self._call(
                    node.receive, command.frame, now_ms(), from_peer=command.sender
                )
            finally:
                self._quota.release(command.sender)
        if isinstance(command, _Contribution):
            await self._call(
                node.set_contribution, command.vector, command.weight, command.schema_hash
            )
            return []
        if isinstance(command, _Call):
            try:
                command.box[:] = [await self._call(command.fn, node), None]
            except Exception as exc:  # handed to the caller, raised there
                command.box[:] = [None, exc]
            command.done.set()
            return []
        if isinstance(command, _Unreachable):
            return await self._call(node.peer_unreachable, command.peer, command.group, now_ms())
        if isinstance(command, _Start):
            if node.busy or not node.contribution_fresh:
                return []
            try:
                return await self._call(node.start_round, command.candidates, now_ms())
            except RoundUsageError as exc:
                log.debug("not starting a round: %s", exc)
                return []
        if isinstance(command, _Abort):
            actions = node.abort(command.reason, now_ms())
            # Sent inline (not spawned) so a stopping daemon knows its ABORTs left.
            for key, frames in _by_recipient(actions).items():
                await self._send_batch(key, frames, timeout_s=1.0)
            self._dispatch([a for a in actions if not isinstance(a, Send)])
            command.done.set()
            return []
        raise TypeError(f"unknown engine command {command!r}")

    def _refresh_view(self) -> None:
        node = self.node
        self.view = MachineView(
            busy=node.busy,
            current_group=node.current_group,
            current_round=node.current_round,
            contribution_fresh=node.contribution_fresh,
            blocked=node.backoff.snapshot(now_ms()),
        )

    def _dispatch(self, actions: list[Action]) -> None:
        assert self._nursery is not None
        # The machine just produced these for its current group (or for one that has ended,
        # or outsiders): a failed send is reported for that group only, never a later one.
        group = self.node.current_group
        for key, frames in _by_recipient(actions).items():
            self._nursery.start_soon(self._send_batch, key, frames, SEND_TIMEOUT_S, group)
        for action in actions:
            # Wake needs no handling: run() asks the machine for its next deadline each turn.
            if not isinstance(action, Send | Wake):
                self._on_action(action)

    async def _send_batch(
        self,
        key: bytes,
        frames: list[bytes],
        timeout_s: float = SEND_TIMEOUT_S,
        group: bytes | None = None,
    ) -> None:
        try:
            with trio.fail_after(timeout_s):
                stream = await self.host.open_stream(key, ROUND_PROTOCOL)
                try:
                    for frame in frames:
                        await self.host.send_frame(key, stream, frame)
                finally:
                    await stream.close()  # type: ignore[attr-defined]
        except Exception as exc:  # the peer is gone or refused us
            self.send_failures += 1
            log.debug("sending %d frame(s) failed: %r", len(frames), exc)
            self._on_unreachable(key)
            if group is not None:  # the machine decides whether its round can go on
                await self._inbox_send.send(_Unreachable(key, group))

    def peer_disconnected(self, key: bytes) -> None:
        """The host lost a connection to ``key`` (a crash closes them all at once). If we
        are in a round, check at once whether ``key`` can still be reached: a member that
        died after we sent it everything would otherwise cost us the round's deadline."""
        group = self.view.current_group
        if group is not None and self._nursery is not None:
            # A notifee callback must never raise into libp2p: a nursery closing right now
            # (we are stopping) refuses new tasks, and then there is nothing to probe for.
            with contextlib.suppress(RuntimeError):
                self._nursery.start_soon(self._probe, key, group)

    async def _probe(self, key: bytes, group: bytes) -> None:
        # Libp2p may keep or redial another connection: an empty round stream tells (the
        # peer's handler reads no frame and closes it).
        await self._send_batch(key, [], PROBE_TIMEOUT_S, group)


def _by_recipient(actions: list[Action]) -> dict[bytes, list[bytes]]:
    batches: dict[bytes, list[bytes]] = {}
    for action in actions:
        if isinstance(action, Send):
            batches.setdefault(action.to, []).append(action.frame)
    return batches
