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

from gossiplearn.peer.net.bulk import BULK_PROTOCOL, BulkChannel, BulkError, listen_host
from gossiplearn.peer.net.host import ROUND_PROTOCOL, Host
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
#: Frames already queued are taken by the machine together, up to this many, in one call on
#: its worker thread: each call is two thread hand-offs, and on a busy machine each hand-off
#: waits for a core (~1-5 ms at a load average of 10: 60 frames a round at k = 4 and 10M
#: elements). 8 frames of <= 1 MiB take the machine ~10-20 ms: the round's own next sends
#: are not held back for longer than that.
FRAME_BATCH = 8
#: A send must make progress within this: opening the stream, writing each frame (<= 1 MiB),
#: the bulk channel's acknowledgement. Not the whole batch: a member's parts of a 40 MB
#: backbone take 24 s at 10 Mbit/s, and a whole batch bounded by 30 s failed on such links
#: (the frames were sent again over libp2p, doubling the round's bytes), or struck the peer.
SEND_TIMEOUT_S = 30.0
#: A probe of a member whose connection closed (peer_disconnected) may have to dial it again:
#: TCP, multistream-select, Noise XX, yamux and the stream's own negotiation take ~5.5 round
#: trips (1.65 s at 300 ms), a lost SYN adds 1 s, a /dns4/ name one lookup: 5 s covers that
#: with room, and bounds how long a member that really died holds the round.
PROBE_TIMEOUT_S = 5.0
#: Frames that go over the bulk channel (peer/net/bulk.py) when it is on; the rest over libp2p.
BULK_KINDS = frozenset({"PART", "REDUCED"})
#: A batch's bulky frames take the bulk channel only from this many bytes: below it, our
#: open libp2p round stream is quicker than a new TCP connection (small models).
BULK_MIN_BYTES = 256 * 1024
#: The bulk channel's TCP connect, and the answer to "which port?", must come within this. A
#: connect takes one round trip (0.3 s at 300 ms) and a lost SYN is resent after 1 s; a
#: firewall that drops connections to the port answers nothing, and the frames must not wait
#: for the kernel's 2 minutes of SYN retries (the round's slack is 3 s): they go over libp2p.
BULK_CONNECT_TIMEOUT_S = 2.0
#: A bulk connection waits this long for a round's next frames (the round streams them a
#: few at a time) before it ends; later ones open a new connection.
BULK_LINGER_S = 1.0
#: After a failed bulk send to a peer, its frames go over libp2p for this long.
BULK_RETRY_S = 60.0


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
    #: {member: pair key} of the round in progress, once its roster is known (bulk channel)
    channel_keys: dict[bytes, bytes] = field(default_factory=dict, repr=False)


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


@dataclass
class _BulkQueue:
    """Bulky frames of one round waiting for one peer's bulk sender (RoundEngine._drain_bulk)."""

    group: bytes
    pair_key: bytes
    frames: list[bytes]
    queued: trio.Event = field(default_factory=trio.Event)  # set when frames are added


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
        *,
        bulk_port: int | None = None,
        serve_bulk: bool = True,
    ) -> None:
        """``bulk_port``: None keeps every frame on libp2p; a port (0: any free one) serves
        the bulk channel there, on the IP of the host's first listen address. ``serve_bulk``
        False: this peer cannot be dialed (it is behind a firewall, reached through relays),
        so it tells senders it has no bulk port (they send over libp2p at once) but still
        sends its own frames over the others' bulk channels."""
        self.host = host
        self.node = node
        self._on_action = on_action
        self._on_unreachable = on_unreachable
        self._inbox_send, self._inbox = trio.open_memory_channel[object](INBOX_CAPACITY)
        self._quota = _PeerQuota(PEER_FRAMES)
        self._nursery: trio.Nursery | None = None
        self.send_failures = 0
        self._view_changed = trio.Event()
        self.view = MachineView()
        self._refresh_view()
        self._bulk_port = bulk_port
        self._bulk_host = listen_host(getattr(host, "listen", []))
        self.bulk: BulkChannel | None = None
        if bulk_port is not None and self._bulk_host is not None:
            self.bulk = BulkChannel(
                node.public_key,
                self._channel_key,
                self._bulk_deliver,
                max_record_bytes=DEFAULT_LIMITS.max_frame_bytes,
            )
            host.handle(BULK_PROTOCOL, self._answer_bulk_port)
        self._out: dict[bytes, object] = {}  # our open round stream to each peer
        self._out_locks: dict[bytes, trio.Lock] = {}
        self._bulk_addresses: dict[bytes, tuple[str, int]] = {}
        self._bulk_queues: dict[bytes, _BulkQueue] = {}  # frames waiting for each peer's sender
        self._no_bulk_until: dict[bytes, float] = {}
        self.bulk_frames_sent = 0
        self.bulk_fallbacks = 0
        #: Batches sent over libp2p because the peer is reached only through a relay.
        self.bulk_relayed = 0
        self._serve_bulk = serve_bulk

    # ---- inputs ----

    async def handle_stream(self, key: bytes, stream: object) -> None:
        """Round protocol handler: queue every frame the peer sends on this stream.

        A slot of the peer's quota is taken before each frame is read, and handed on with the
        frame to the machine's task, which gives it back (see PEER_FRAMES).
        """
        limit = DEFAULT_LIMITS.max_frame_bytes

        async def read() -> bytes | None:
            return await self.host.receive_frame(key, stream, limit)

        while await self._queue(key, read):
            pass
        await stream.close()  # type: ignore[attr-defined]

    async def _queue(self, key: bytes, read: Callable[[], Any]) -> bool:
        """Take a slot of ``key``'s quota, ``await read()`` one frame (None: the peer is
        done) and queue it for the machine, which gives the slot back. False if no frame."""
        await self._quota.acquire(key)
        queued = False
        try:
            frame = await read()
            if frame is None:
                return False
            await self._inbox_send.send(_Frame(key, frame))
            queued = True
            return True
        finally:
            if not queued:
                self._quota.release(key)

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
                if self.bulk is not None:
                    assert self._bulk_host is not None and self._bulk_port is not None
                    try:
                        await nursery.start(self.bulk.serve, self._bulk_host, self._bulk_port)
                    except OSError as exc:
                        log.warning(
                            "bulk channel off (cannot listen on %s port %d: %s); round frames "
                            "go over libp2p",
                            self._bulk_host,
                            self._bulk_port,
                            exc.strerror or exc,
                        )
                        self.bulk = None
                arrived = 0  # commands queued when the machine last worked, to take first
                held: object | None = None  # taken out of the inbox behind a batch of frames
                while True:
                    deadline = self.node.next_deadline()
                    timeout = (
                        math.inf if deadline is None else max(0.0, (deadline - now_ms()) / 1000)
                    )
                    command, held = held, None
                    if command is None and timeout > 0:
                        with trio.move_on_after(timeout):
                            command = await self._inbox.receive()
                    elif command is None and arrived:
                        # Work is due now (the round streams: shards to mask and send, see
                        # Aggregation.work): what was queued after the last work step goes
                        # first, then the next step, so that reducing and forwarding the
                        # others' shards keeps pace with masking and sending ours.
                        arrived -= 1
                        with contextlib.suppress(trio.WouldBlock):
                            command = self._inbox.receive_nowait()
                    if command is None:
                        actions = await self._call(self.node.tick, now_ms())
                        arrived = self._inbox.statistics().current_buffer_used
                    elif isinstance(command, _Frame):
                        frames, held = self._frames_queued_after(command)
                        arrived = max(0, arrived - len(frames))
                        actions = await self._receive_frames(frames)
                    else:
                        actions = await self._execute(command)
                    self._refresh_view()
                    self._dispatch(actions)
        finally:
            # The host closes its connections after we stop, and tells peer_disconnected.
            self._nursery = None
            await self._close_round_streams()

    async def _call(self, fn: Callable[..., Any], *args: object, **kwargs: object) -> Any:
        """Run a machine method in a worker thread (only this task ever touches the machine)."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    def _frames_queued_after(self, first: _Frame) -> tuple[list[_Frame], object | None]:
        """``first`` and the frames queued right behind it, up to FRAME_BATCH, and the first
        other command taken out of the inbox behind them if any (it goes next: the order of
        inputs is kept)."""
        frames = [first]
        while len(frames) < FRAME_BATCH:
            try:
                command = self._inbox.receive_nowait()
            except trio.WouldBlock:
                break
            if not isinstance(command, _Frame):
                return frames, command
            frames.append(command)
        return frames, None

    async def _receive_frames(self, frames: list[_Frame]) -> list[Action]:
        """The machine takes ``frames`` in order, in one call on a worker thread."""
        node = self.node

        def receive_all() -> list[Action]:
            actions: list[Action] = []
            for command in frames:
                actions += node.receive(command.frame, now_ms(), from_peer=command.sender)
            return actions

        try:
            return await self._call(receive_all)
        finally:
            for command in frames:
                self._quota.release(command.sender)

    async def _execute(self, command: object) -> list[Action]:
        node = self.node
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
            channel_keys=node.channel_keys,
        )
        self._view_changed.set()
        self._view_changed = trio.Event()

    def _dispatch(self, actions: list[Action]) -> None:
        assert self._nursery is not None
        # The machine just produced these for its current group (or for one that has ended,
        # or outsiders): a failed send is reported for that group only, never a later one.
        group = self.node.current_group
        keys = self.view.channel_keys
        for key, sends in _sends_by_recipient(actions).items():
            pair_key = keys.get(key)
            bulky = [s.frame for s in sends if s.kind in BULK_KINDS]
            if (
                bulky
                and sum(len(frame) for frame in bulky) >= BULK_MIN_BYTES
                and self.bulk is not None
                and group is not None
                and pair_key is not None
                and self._no_bulk_until.get(key, 0.0) <= time.monotonic()
                and not self._relayed(key)
            ):
                self._queue_bulk(key, bulky, group, pair_key)
                frames = [s.frame for s in sends if s.kind not in BULK_KINDS]
            else:
                frames = [s.frame for s in sends]
            if frames:
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
        """Send ``frames`` to ``key``; each step must make progress within ``timeout_s`` (see
        SEND_TIMEOUT_S). No frames: a probe (can a new stream be opened now?)."""
        try:
            if not frames:
                with trio.fail_after(timeout_s):
                    stream = await self.host.open_stream(key, ROUND_PROTOCOL)
                    await stream.close()  # type: ignore[attr-defined]
            else:
                await self._send_on_round_stream(key, frames, timeout_s)
        except Exception as exc:  # the peer is gone or refused us
            self.send_failures += 1
            log.debug("sending %d frame(s) failed: %r", len(frames), exc)
            self._on_unreachable(key)
            if group is not None:  # the machine decides whether its round can go on
                await self._inbox_send.send(_Unreachable(key, group))

    async def _send_on_round_stream(
        self, key: bytes, frames: list[bytes], timeout_s: float = SEND_TIMEOUT_S
    ) -> None:
        """Write ``frames`` on our long-lived round stream to ``key``, opening it if needed.

        One stream per peer, kept open: opening a yamux stream and negotiating its protocol
        costs round trips in Python on every batch, and a round has six message steps. A
        stream found broken is replaced once (frames it may have delivered arrive twice and
        the replay guard refuses the copies); a new stream that fails is the peer's failure.
        """
        lock = self._out_locks.get(key)
        if lock is None:
            lock = self._out_locks[key] = trio.Lock()
        async with lock:
            while True:
                stream = self._out.get(key)
                fresh = stream is None
                if stream is None:
                    with trio.fail_after(timeout_s):
                        stream = await self.host.open_stream(key, ROUND_PROTOCOL)
                    self._out[key] = stream
                try:
                    for frame in frames:
                        with trio.fail_after(timeout_s):
                            await self.host.send_frame(key, stream, frame)
                    return
                except Exception:
                    if self._out.get(key) is stream:
                        del self._out[key]
                    with trio.move_on_after(1), contextlib.suppress(Exception):
                        await stream.reset()  # type: ignore[attr-defined]
                    if fresh:
                        raise

    async def _close_round_streams(self) -> None:
        streams, self._out = list(self._out.values()), {}
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            for stream in streams:
                with contextlib.suppress(Exception):
                    await stream.close()  # type: ignore[attr-defined]

    # ---- the bulk channel ----

    def _relayed(self, key: bytes) -> bool:
        """The peer is reached only through a relay: no direct path for the bulk channel (its
        IP would be the relay's), so the frames go over the relayed libp2p connection."""
        reached = getattr(self.host, "reached", None)
        if reached is None or reached(key) != "relayed":
            return False
        self.bulk_relayed += 1
        return True

    def _queue_bulk(self, key: bytes, frames: list[bytes], group: bytes, pair_key: bytes) -> None:
        """Queue bulky frames for ``key``: one task per peer sends them, on one connection
        at a time, whatever has queued up meanwhile on each (the round streams a shard or two
        per step: a connection per step would cost a handshake each and overrun the
        receiver's MAX_PER_SENDER)."""
        assert self._nursery is not None
        queue = self._bulk_queues.get(key)
        if queue is not None and queue.group == group:
            queue.frames.extend(frames)
            queue.queued.set()
            return
        queue = _BulkQueue(group, pair_key, list(frames))
        self._bulk_queues[key] = queue
        self._nursery.start_soon(self._drain_bulk, key, queue)

    async def _drain_bulk(self, key: bytes, queue: _BulkQueue) -> None:
        try:
            while queue.frames:
                frames, queue.frames = queue.frames, []
                if self._no_bulk_until.get(key, 0.0) > time.monotonic():
                    await self._send_batch(key, frames, SEND_TIMEOUT_S, queue.group)
                else:
                    await self._send_bulk(key, frames, queue.group, queue.pair_key, queue)
        finally:
            if self._bulk_queues.get(key) is queue:
                del self._bulk_queues[key]

    async def _more_bulk(self, queue: _BulkQueue) -> list[bytes]:
        """The frames queued for the same connection meanwhile, waiting up to BULK_LINGER_S
        for some while the round goes on; none: the connection ends."""
        with trio.move_on_after(BULK_LINGER_S):
            while not queue.frames and self.view.current_group == queue.group:
                queue.queued = trio.Event()
                async with trio.open_nursery() as nursery:  # whichever comes first

                    async def either(event: trio.Event) -> None:
                        await event.wait()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(either, queue.queued)
                    nursery.start_soon(either, self._view_changed)
        frames, queue.frames = queue.frames, []
        return frames

    async def _send_bulk(
        self,
        key: bytes,
        frames: list[bytes],
        group: bytes,
        pair_key: bytes,
        queue: _BulkQueue | None = None,
    ) -> None:
        """Frames over the bulk channel, and those ``queue`` gets meanwhile on the same
        connection; over libp2p if that fails for any reason."""
        assert self.bulk is not None
        sent = list(frames)

        async def more() -> list[bytes]:
            if queue is None:
                return []
            frames = await self._more_bulk(queue)
            sent.extend(frames)
            return frames

        try:
            address = await self._bulk_address(key)
            await self.bulk.send(
                address,
                group,
                key,
                pair_key,
                frames,
                connect_timeout_s=BULK_CONNECT_TIMEOUT_S,
                progress_timeout_s=SEND_TIMEOUT_S,
                more=more,
            )
            self.bulk_frames_sent += len(sent)
            for frame in sent:
                self.host.counters.bytes_out[key] += 4 + len(frame)
            return
        except Exception as exc:
            self.bulk_fallbacks += 1
            self._bulk_addresses.pop(key, None)
            self._no_bulk_until[key] = time.monotonic() + BULK_RETRY_S
            log.debug("bulk send of %d frame(s) failed (%r): over libp2p", len(sent), exc)
        await self._send_batch(key, sent, SEND_TIMEOUT_S, group)

    async def _bulk_address(self, key: bytes) -> tuple[str, int]:
        """The peer's bulk channel: the IP of our libp2p connection to it and the port it
        tells us over libp2p (asked once, then cached until a send fails)."""
        address = self._bulk_addresses.get(key)
        if address is not None:
            return address
        with trio.fail_after(BULK_CONNECT_TIMEOUT_S):
            stream = await self.host.open_stream(key, BULK_PROTOCOL)
            try:
                answer = await self.host.receive_frame(key, stream, 16)
                remote = stream.get_remote_address()  # type: ignore[attr-defined]
            finally:
                await stream.close()  # type: ignore[attr-defined]
        if answer is None or len(answer) != 2 or not remote:
            raise BulkError("no_port", "the peer serves no bulk channel")
        address = (str(remote[0]), int.from_bytes(answer, "big"))
        self._bulk_addresses[key] = address
        return address

    async def _bulk_deliver(self, key: bytes, read: Callable[[], Any]) -> bool:
        async def counted() -> bytes | None:
            frame = await read()
            if frame is not None:
                self.host.counters.bytes_in[key] += 4 + len(frame)
            return frame

        return await self._queue(key, counted)

    async def _answer_bulk_port(self, key: bytes, stream: object) -> None:
        port = self.bulk.port if self.bulk is not None and self._serve_bulk else None
        if port is not None:
            await self.host.send_frame(key, stream, port.to_bytes(2, "big"))
        await stream.close()  # type: ignore[attr-defined]

    async def _channel_key(self, group: bytes, sender: bytes, timeout_s: float) -> bytes | None:
        """The pair key shared with ``sender`` in ``group``, once the roster is known; None
        if ``group`` is not the round in progress or ``sender`` is not in it."""
        with trio.move_on_after(timeout_s):
            while True:
                view = self.view
                if view.current_group != group:
                    return None
                pair_key = view.channel_keys.get(sender)
                if pair_key is not None:
                    return pair_key
                if view.channel_keys:  # the roster is known and does not name it
                    return None
                await self._view_changed.wait()
        return None

    def peer_disconnected(self, key: bytes) -> None:
        """The host lost a connection to ``key`` (a crash closes them all at once). If we
        are in a round, check at once whether ``key`` can still be reached: a member that
        died after we sent it everything would otherwise cost us the round's deadline."""
        self._out.pop(key, None)  # its connection is gone: a later send opens a new stream
        self._bulk_addresses.pop(key, None)
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


def _sends_by_recipient(actions: list[Action]) -> dict[bytes, list[Send]]:
    batches: dict[bytes, list[Send]] = {}
    for action in actions:
        if isinstance(action, Send):
            batches.setdefault(action.to, []).append(action)
    return batches


def _by_recipient(actions: list[Action]) -> dict[bytes, list[bytes]]:
    batches: dict[bytes, list[bytes]] = {}
    for action in actions:
        if isinstance(action, Send):
            batches.setdefault(action.to, []).append(action.frame)
    return batches
